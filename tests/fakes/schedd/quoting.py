"""HTCondor's argument and environment string syntax ("V1" and the quoted "V2").

Submit expansion uses it to store ``Arguments``/``Environment`` in canonical form and the
starter uses it to split them again, so both sides agree on quoting by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import classad2

_V2_QUOTE_NEEDED = re.compile(r"[\s']")


def split_v2_raw(raw: str) -> list[str]:
    """Split a V2 raw argument string (as stored in the ``Arguments`` job attribute).

    Whitespace separates arguments; single quotes group, and ``''`` inside them is a
    literal single quote; quoted and unquoted pieces next to each other join.
    """
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch in " \t\r\n":
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
            i += 1
            continue
        in_arg = True
        if ch != "'":
            current.append(ch)
            i += 1
            continue
        i += 1
        while True:
            if i >= n:
                raise ValueError(f"unterminated single quote in {raw!r}")
            if raw[i] == "'":
                if i + 1 < n and raw[i + 1] == "'":
                    current.append("'")
                    i += 2
                    continue
                i += 1
                break
            current.append(raw[i])
            i += 1
    if in_arg:
        args.append("".join(current))
    return args


def quote_v2(arg: str) -> str:
    """Quote one argument for a V2 raw string, the way ``ArgList`` does."""
    if arg and not _V2_QUOTE_NEEDED.search(arg):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def join_v2_raw(args: Iterable[str]) -> str:
    """Join arguments into the canonical V2 raw string stored in ``Arguments``."""
    return " ".join(quote_v2(a) for a in args)


def is_v2_quoted(value: str) -> bool:
    """Tell the new syntax (whole value in double quotes) from the old one, like submit does."""
    value = value.strip()
    return len(value) >= 2 and value[0] == '"' and value[-1] == '"'


def unquote_v2_submit(value: str) -> str:
    """Strip the submit-file double quotes of a V2 value; ``""`` inside is a literal ``"``."""
    return value.strip()[1:-1].replace('""', '"')


def arguments_to_attr(value: str) -> tuple[str, str]:
    """Map a submit ``arguments`` value to (``Arguments`` V2 raw) or (``Args`` V1)."""
    if is_v2_quoted(value):
        return "Arguments", join_v2_raw(split_v2_raw(unquote_v2_submit(value)))
    return "Args", " ".join(value.split())


def environment_to_attr(value: str) -> tuple[str, str]:
    """Map a submit ``environment`` value to (``Environment`` V2 raw) or (``Env`` V1)."""
    if is_v2_quoted(value):
        pairs = parse_env_v2(unquote_v2_submit(value))
        return "Environment", format_env_v2(pairs)
    parse_env_v1(value)  # validate
    return "Env", value.strip()


def parse_env_v2(raw: str) -> dict[str, str]:
    """Parse a V2 raw environment (``A=1 B='x y'``) into a dict."""
    env: dict[str, str] = {}
    for token in split_v2_raw(raw):
        name, sep, val = token.partition("=")
        if not sep or not name:
            raise ValueError(f"environment entry {token!r} is not NAME=VALUE")
        env[name] = val
    return env


def parse_env_v1(raw: str) -> dict[str, str]:
    """Parse a V1 environment (``A=1;B=2``, the Unix delimiter) into a dict."""
    env: dict[str, str] = {}
    for token in raw.strip().split(";"):
        token = token.strip()
        if not token:
            continue
        name, sep, val = token.partition("=")
        if not sep or not name:
            raise ValueError(f"environment entry {token!r} is not NAME=VALUE")
        env[name] = val
    return env


def format_env_v2(env: Mapping[str, str]) -> str:
    """Format a dict as the canonical V2 raw environment string."""
    return " ".join(f"{k}={quote_v2(v) if v else ''}" for k, v in env.items())


def job_argv_tail(ad: classad2.ClassAd) -> list[str]:
    """The job's arguments from its ad: ``Arguments`` (V2) wins over ``Args`` (V1)."""
    if "Arguments" in ad:
        return split_v2_raw(str(ad.eval("Arguments")))
    if "Args" in ad:
        return str(ad.eval("Args")).split()
    return []


def job_environment(ad: classad2.ClassAd) -> dict[str, str]:
    """The job's own environment from its ad: ``Environment`` (V2) wins over ``Env`` (V1)."""
    if "Environment" in ad:
        return parse_env_v2(str(ad.eval("Environment")))
    if "Env" in ad:
        return parse_env_v1(str(ad.eval("Env")))
    return {}
