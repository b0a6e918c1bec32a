"""Requests refused before any route sees them: what upstream's routes would answer 500 to."""

from __future__ import annotations

import base64

import pytest
from dask_gateway_server import routes

from gateway_backend.api_guards import (
    MAX_WORKER_COUNT,
    _authorization_problem,
    _scaling_problem,
    user_name_problem,
)


@pytest.mark.parametrize("count", [-1, "3", "\n", 1.5, True, None, MAX_WORKER_COUNT + 1])
def test_scale_counts_other_than_small_non_negative_integers_are_refused(count):
    assert "count must be an integer from 0" in _scaling_problem(
        routes.scale_cluster, {"count": count}
    )


def test_a_valid_scale_count_passes():
    assert _scaling_problem(routes.scale_cluster, {"count": 0}) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"minimum": "x"}, "minimum must be null or an integer"),
        ({"maximum": 10**400}, "maximum must be null or an integer"),
        ({"active": "yes"}, "active must be true or false"),
        ({"minimum": 5, "maximum": 2}, "minimum (5) must not be larger than maximum (2)"),
    ],
)
def test_adapt_bodies_are_checked_whole(body, message):
    assert message in _scaling_problem(routes.adapt_cluster, body)


def test_adapt_with_defaults_passes():
    assert _scaling_problem(routes.adapt_cluster, {"minimum": None, "maximum": 4}) is None


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "header", ["Basic", "Basic ", "Basic !!", f"Basic {b64('nocolon')}", f"Basic {b64('é:x')}"]
)
def test_malformed_authorization_headers_are_named(header):
    assert _authorization_problem(header)


@pytest.mark.parametrize("header", [None, f"Basic {b64('alice:pw')}", "token abc", "Bearer x"])
def test_well_formed_authorization_headers_pass(header):
    assert _authorization_problem(header) is None


@pytest.mark.parametrize("name", ["alice", "Alice.Smith@CERN.CH", "é", "a b"])
def test_printable_user_names_are_accepted(name):
    assert user_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "a\nb", "\x00", "\ud800", "x" * 257, None])
def test_user_names_no_language_can_carry_are_refused(name):
    assert user_name_problem(name)
