"""Which idle Ray worker takes a job (modules/cluster/scheduler.py): checkpoint affinity, pure and fast."""

from __future__ import annotations

import pytest

from modules.cluster.scheduler import Candidate, choose_worker


def worker(id: str, *loaded: str, limit: int = 1, idle_since: float = 0.0) -> Candidate:
    return Candidate(id, tuple(loaded), limit, idle_since)


def test_no_idle_worker_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="at least one idle worker"):
        choose_worker([], "a")


def test_a_worker_holding_the_checkpoint_is_chosen_over_one_idle_longer():
    holder = worker("w2", "a", idle_since=50.0)
    chosen = choose_worker([worker("w1", "b", idle_since=1.0), holder, worker("w3", idle_since=2.0)], "a")
    assert chosen.id == "w2"


def test_among_holders_the_one_that_used_it_most_recently_wins():
    # w1 used "a" before "b" (second in its cache); w2's last job used "a". w1 is idle longer.
    older = worker("w1", "b", "a", limit=2, idle_since=1.0)
    recent = worker("w2", "a", "c", limit=2, idle_since=9.0)
    assert choose_worker([older, recent], "a").id == "w2"
    assert choose_worker([recent, older], "a").id == "w2"  # not the list's order


def test_holders_equally_recent_go_to_the_one_idle_longest():
    first = worker("w1", "a", idle_since=7.0)
    second = worker("w2", "a", idle_since=3.0)
    assert choose_worker([first, second], "a").id == "w2"


def test_room_in_the_cache_comes_before_evicting():
    full = worker("w1", "b", limit=1, idle_since=1.0)  # loading "a" would evict "b"
    roomy = worker("w2", "c", limit=2, idle_since=9.0)
    assert choose_worker([full, roomy], "a").id == "w2"


def test_with_room_on_several_the_emptiest_is_chosen_then_the_one_idle_longest():
    half = worker("w1", "b", limit=3, idle_since=1.0)
    empty = worker("w2", limit=3, idle_since=9.0)
    assert choose_worker([half, empty], "a").id == "w2"
    other_empty = worker("w3", limit=3, idle_since=4.0)
    assert choose_worker([half, empty, other_empty], "a").id == "w3"


def test_a_cache_limit_below_one_still_holds_one_model():
    # sd_checkpoints_limit 0 behaves as 1: an empty worker has room, a worker with one model has none.
    assert choose_worker([worker("w1", "b", limit=0, idle_since=1.0), worker("w2", limit=0, idle_since=5.0)],
                         "a").id == "w2"


def test_evicting_a_checkpoint_a_busy_worker_keeps_is_preferred():
    only_copy = worker("w1", "b", idle_since=1.0)  # idle longer, but "b" exists nowhere else
    duplicate = worker("w2", "c", idle_since=5.0)
    assert choose_worker([only_copy, duplicate], "a", others=[("c",)]).id == "w2"
    # Without the busy worker's copy the tie goes to the worker idle longest.
    assert choose_worker([only_copy, duplicate], "a").id == "w1"


def test_evicting_a_checkpoint_another_idle_worker_keeps_is_preferred():
    # w1 and w3 both hold "c" (the model each would evict); w2's "b" is the only copy.
    w1 = worker("w1", "x", "c", limit=2, idle_since=6.0)
    w2 = worker("w2", "y", "b", limit=2, idle_since=1.0)
    w3 = worker("w3", "z", "c", limit=2, idle_since=4.0)
    assert choose_worker([w1, w2, w3], "a").id == "w3"  # kept elsewhere; then idle longest


def test_only_the_least_recently_used_model_counts_as_evicted():
    # w1's kept-elsewhere model "c" is its most recent one, which a load would not evict.
    w1 = worker("w1", "c", "b", limit=2, idle_since=1.0)
    w2 = worker("w2", "x", "d", limit=2, idle_since=5.0)
    assert choose_worker([w1, w2], "a", others=[("d",)]).id == "w2"
    assert choose_worker([w1, w2], "a", others=[("c",)]).id == "w1"  # nobody evicts a kept model: idle longest


def test_without_a_checkpoint_the_worker_idle_longest_takes_the_job():
    workers = [worker("w1", "a", idle_since=8.0), worker("w2", idle_since=2.0), worker("w3", "b", idle_since=5.0)]
    assert choose_worker(workers, None).id == "w2"
    assert choose_worker(workers, None, others=[("a",), ("b",)]).id == "w2"


def test_a_single_idle_worker_is_chosen_whatever_it_holds():
    only = worker("w1", "b", idle_since=3.0)
    assert choose_worker([only], "a") is only
