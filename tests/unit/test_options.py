"""The cluster options users see, and refusals that say what to change."""

from __future__ import annotations

from gateway_backend.options import default_cluster_options, explain_invalid_options


def test_valid_options_need_no_explanation():
    options = default_cluster_options(4, 8)
    assert explain_invalid_options(options, {"worker_cores": 2, "worker_memory": 4}) is None


def test_every_bad_option_is_named_with_its_valid_range():
    options = default_cluster_options(4, 8)
    message = explain_invalid_options(options, {"worker_cores": 0, "worker_memory": 64, "x": 1})
    assert "unknown option(s) 'x': remove them (this gateway accepts: worker_cores" in message
    assert "worker_cores=0 is not valid: use an integer from 1 to 4" in message
    assert "worker_memory=64 is not valid: use a number from 0.25 to 8" in message


def test_numbers_too_large_for_a_float_are_refused_not_crashed_on():
    message = explain_invalid_options(default_cluster_options(4, 8), {"worker_memory": 10**400})
    assert (
        "worker_memory=1000" in message and "is not valid: use a number from 0.25 to 8" in message
    )
    assert len(message) < 300


def test_options_must_be_a_mapping():
    assert "must be a mapping" in explain_invalid_options(default_cluster_options(1, 1), [1])


def test_default_options_turn_gib_into_bytes():
    options = default_cluster_options(4, 8)
    config = options.get_configuration({"worker_cores": 2, "worker_memory": 1.5}, None)
    assert config == {"worker_cores": 2, "worker_memory": int(1.5 * 2**30)}
