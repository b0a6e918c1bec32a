"""User text inside our messages stays one bounded, encodable line."""

from __future__ import annotations

from gateway_backend.usertext import one_line, quoted


def test_quoted_escapes_newlines_controls_and_lone_surrogates():
    assert quoted("a\nb\x1b\ud800") == "'a\\nb\\x1b\\ud800'"


def test_quoted_bounds_huge_values_and_says_how_long_they_were():
    text = quoted("x" * 100_000)
    assert len(text) < 120 and text.endswith("(100002 characters)")


def test_one_line_keeps_plain_messages_and_escapes_the_rest():
    assert one_line("user alice is not a member") == "user alice is not a member"
    assert one_line("user mallory\nFORGED \ud800") == "user mallory\\nFORGED \\ud800"
    assert one_line("é") == "é"


def test_one_line_output_is_always_utf8_encodable():
    one_line("\ud800\udfff" * 10).encode("utf-8")
