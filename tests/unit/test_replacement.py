"""Lost workers: back-off between rounds, a budget per cluster, and what renews it."""

from __future__ import annotations

import math

from gateway_backend.replacement import FailureBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(n=3, backoff=2.0, backoff_max=5.0, healthy_after=100.0):
    clock = Clock()
    return FailureBudget(n, backoff, backoff_max, healthy_after, clock=clock), clock


def test_a_lost_worker_delays_the_next_start_by_the_backoff():
    b, clock = budget()
    loss = b.lost("c", "worker process exited: boom", worker="w1")
    assert loss.delay == 2.0
    assert loss.message == (
        "worker w1 lost (worker process exited: boom); replacing lost workers in 2s "
        "(failure 1 of the budget of 3)"
    )
    assert b.wait("c") == 2.0
    clock.now += 2.0
    assert b.wait("c") == 0.0


def test_the_backoff_doubles_per_round_up_to_its_maximum():
    b, clock = budget(n=10)
    delays = []
    for _ in range(4):
        delays.append(b.lost("c", "x").delay)
        clock.now += delays[-1]
    assert delays == [2.0, 4.0, 5.0, 5.0]


def test_workers_lost_during_a_backoff_are_one_round_and_say_nothing_more():
    b, clock = budget(n=2)
    b.lost("c", "image is broken")
    clock.now += 1.0
    again = b.lost("c", "image is broken")
    assert again.message == "" and again.delay == 1.0
    clock.now += 1.0
    assert b.wait("c") == 0.0  # still one round: the budget of 2 is not spent


def test_the_budget_spent_stops_starts_with_one_event_naming_the_repeated_reason():
    b, clock = budget(n=3)
    messages = []
    for _ in range(5):
        loss = b.lost("c", "worker process exited: No module named 'coffea'")
        messages.append(loss)
        clock.now += 10
    spent = [m for m in messages if m.level == "error"]
    assert len(spent) == 1
    assert spent[0].delay == math.inf
    assert "lost 3 times in a row" in spent[0].message
    assert "ElasticBackend.worker_failure_budget=3" in spent[0].message
    assert "each time: worker process exited: No module named 'coffea'" in spent[0].message
    assert "scale the cluster again" in spent[0].message
    assert messages[3].message == messages[4].message == ""  # silent once spent
    assert b.wait("c") == math.inf


def test_reasons_that_differ_only_in_the_workers_name_are_the_same_reason():
    b, clock = budget(n=2)
    b.lost("c", "job held: cannot run dask worker --name w1", worker="w1")
    clock.now += 10
    spent = b.lost("c", "job held: cannot run dask worker --name w2", worker="w2")
    assert "each time: job held: cannot run dask worker --name w2" in spent.message


def test_different_reasons_name_the_last_one():
    b, clock = budget(n=2)
    b.lost("c", "pod was deleted")
    clock.now += 10
    spent = b.lost("c", "OOMKilled")
    assert "last: OOMKilled" in spent.message


def test_a_scale_request_renews_a_spent_budget():
    b, _ = budget(n=1)
    b.lost("c", "x")
    assert b.wait("c") == math.inf
    assert b.renew("c") is True
    assert b.wait("c") == 0.0
    assert b.renew("c") is False  # nothing was spent


def test_a_worker_lost_after_it_was_healthy_is_replaced_without_spending_the_budget():
    b, clock = budget(n=2, healthy_after=100.0)
    b.lost("c", "crashed")
    clock.now += 10
    loss = b.lost("c", "the job was preempted", connected_for=3600)
    assert loss.level == "warning" and "after 3600s of work" in loss.message
    assert loss.delay == 2.0
    clock.now += 10
    assert b.lost("c", "crashed").level == "warning"  # the count started again


def test_a_loss_long_after_the_last_counted_one_starts_the_count_again():
    b, clock = budget(n=2, healthy_after=100.0)
    b.lost("c", "crashed")
    clock.now += 150
    loss = b.lost("c", "crashed")
    assert "failure 1 of" in loss.message


def test_young_workers_that_connected_and_died_spend_the_budget():
    b, clock = budget(n=2)
    b.lost("c", "left", connected_for=5)
    clock.now += 10
    assert b.lost("c", "left", connected_for=5).delay == math.inf


def test_clusters_have_budgets_of_their_own():
    b, _ = budget(n=1)
    b.lost("a", "x")
    assert b.wait("a") == math.inf and b.wait("b") == 0.0
    b.forget("a")
    assert b.wait("a") == 0.0
