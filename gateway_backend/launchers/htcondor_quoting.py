"""Values in HTCondor's submit language and in ClassAd expressions: escaped exactly, or refused.

``htcondor2.Schedd.submit`` turns the submit dict into submit text and parses it again,
expanding macros (``$(name)``, ``$ENV(name)``, ``$RANDOM_CHOICE(...)``...) in every value,
in the gateway's process. A value is therefore safe only if that round trip gives back
exactly the value meant. The rules, checked against the real ``htcondor2.Submit`` in
``tests/unit/test_htcondor.py``:

* no line breaks or other control characters (tab excepted): a newline starts a new submit
  command, and none of them can be escaped; such values are refused;
* ``$`` is written as ``$(DOLLAR)``, which submit expansion turns into a literal ``$``;
  ``$$`` (HTCondor expands ``$$(...)`` against the machine ad when the job is matched) and a
  literal ``$(DOLLAR)`` cannot be written that way and are refused;
* ``arguments``/``environment`` use HTCondor's "new" syntax: the whole value in double
  quotes, ``"`` doubled inside; a word with whitespace or ``'`` in single quotes, ``'``
  doubled (``it's`` -> ``'it''s'``);
* ClassAd string literals (``+DaskGatewayCluster = "..."``) come from ``classad2.quote``,
  with ``$`` as the octal escape ``\\044`` so that submit expansion never sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..usertext import quoted

#: Characters no submit value can carry: C0 controls except tab, DEL, and the characters
#: Python's ``str.splitlines`` also breaks lines at.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_NO_LITERAL = re.compile(r"\$\$|\$\(DOLLAR\)", re.IGNORECASE)
_NEEDS_SINGLE_QUOTES = re.compile(r"[\s']")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Whatever an admin's accounting-user pattern allows, never more than printable ASCII
#: without space and ``$``.
_ACCOUNTING_FLOOR = re.compile(r"[!-#%-~]+")


class UnsafeValue(ValueError):
    """A value HTCondor could not receive exactly; the message says what to change."""


def check_literal(value: str, what: str) -> None:
    """Refuse ``value`` if no submit text expands back to it exactly."""
    bad = _CONTROL.search(value)
    if bad:
        raise UnsafeValue(
            f"{what} {quoted(value)} contains the control character {bad.group()!a}, "
            "which an HTCondor submit description cannot carry; remove it"
        )
    bad = _NO_LITERAL.search(value)
    if bad:
        raise UnsafeValue(
            f"{what} {quoted(value)} contains {bad.group()!r}, which HTCondor always expands "
            "as a macro and cannot pass on literally; remove it"
        )


def submit_literal(value: str, what: str) -> str:
    """``value`` as submit text that macro expansion turns back into ``value`` exactly."""
    check_literal(value, what)
    return value.replace("$", "$(DOLLAR)")


def _v2_word(word: str) -> str:
    """One argument or environment value in the new syntax (before the outer quoting)."""
    if word and not _NEEDS_SINGLE_QUOTES.search(word):
        return word
    return "'" + word.replace("'", "''") + "'"


def _v2_value(words: Iterable[str]) -> str:
    """The whole new-syntax value: words joined, ``"`` doubled, in double quotes."""
    return '"' + " ".join(w.replace('"', '""') for w in words) + '"'


def arguments_value(args: Iterable[str], macros: Mapping[str, str] | None = None) -> str:
    """The submit ``arguments`` value passing ``args`` to the job exactly.

    An argument equal to a key of ``macros`` is written as that key's value unescaped
    (e.g. a placeholder for ``$(worker_name)``); every other ``$`` is literal.
    """
    macros = macros or {}
    words = []
    for i, arg in enumerate(args):
        if arg in macros:
            words.append(macros[arg])
            continue
        check_literal(arg, f"argument {i + 1}")
        words.append(_v2_word(arg).replace("$", "$(DOLLAR)"))
    return _v2_value(words)


def environment_value(env: Mapping[str, str]) -> str:
    """The submit ``environment`` value giving the job exactly ``env``."""
    words = []
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise UnsafeValue(
                f"environment variable name {quoted(name)} is not valid: use letters, "
                "digits and '_', not starting with a digit"
            )
        check_literal(value, f"environment variable {name}")
        words.append(f"{name}={_v2_word(value)}".replace("$", "$(DOLLAR)"))
    return _v2_value(words)


def classad_string(value: str) -> str:
    """A ClassAd string literal for a ``+Attr`` submit command: any text, exactly."""
    import classad2

    return classad2.quote(value).replace("$", "\\044")


def constraint_string(value: str) -> str:
    """A ClassAd string literal inside a query constraint (no submit expansion there)."""
    import classad2

    return classad2.quote(value)


def check_accounting_user(name: str, pattern: re.Pattern[str]) -> str:
    """``name`` if it may be an ``accounting_group_user``, else a refusal saying why."""
    if pattern.fullmatch(name) and _ACCOUNTING_FLOOR.fullmatch(name):
        return name
    raise UnsafeValue(
        f"the user name {quoted(name)} cannot be the HTCondor accounting user of worker "
        f"jobs: this gateway accepts names matching {pattern.pattern!r} "
        "(HTCondorLauncher.accounting_user_pattern). Log in with an account whose name "
        "matches, or ask the gateway's admins"
    )
