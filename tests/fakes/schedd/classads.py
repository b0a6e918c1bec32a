"""How the daemon reads job ads: JobStatus codes and classad2 results with HTCondor's semantics.

``classad2.Value`` (UNDEFINED/ERROR) is an ``IntEnum``, so every helper here tests for it
before treating a result as a number or a boolean; the rest of the daemon relies on that.
"""

from __future__ import annotations

from typing import Any

import classad2

IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)


def truthy(value: Any) -> bool:
    """ClassAd EvalBool semantics: booleans, non-zero numbers; UNDEFINED/ERROR are false."""
    if isinstance(value, classad2.Value):  # an IntEnum: must be tested before int
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return False


def policy(ad: classad2.ClassAd, attr: str) -> bool | None:
    """Evaluate a job policy expression: True/False, or None for UNDEFINED/ERROR/non-bool."""
    if attr not in ad:
        return False
    try:
        value = ad.eval(attr)
    except Exception:
        return None
    if isinstance(value, classad2.Value):  # UNDEFINED / ERROR (an IntEnum, so before int)
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return None


def int_attr(ad: classad2.ClassAd, attr: str, default: int) -> int:
    """``attr`` evaluated as a whole number, ``default`` when missing or not a number."""
    try:
        value = ad.eval(attr) if attr in ad else default
    except Exception:
        return default
    if isinstance(value, classad2.Value) or not isinstance(value, (int, float)):
        return default
    return int(value)


def str_attr(ad: classad2.ClassAd, attr: str, default: str = "") -> str:
    """``attr`` evaluated as a string, ``default`` when missing or not a string."""
    try:
        value = ad.eval(attr) if attr in ad else default
    except Exception:
        return default
    return value if isinstance(value, str) else default


def matches(expr: classad2.ExprTree, ad: classad2.ClassAd) -> bool:
    """Whether a constraint selects ``ad`` (an evaluation error selects nothing)."""
    try:
        return truthy(expr.eval(ad))
    except Exception:
        return False
