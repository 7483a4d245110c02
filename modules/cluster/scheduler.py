"""Which idle worker takes a job: checkpoint affinity (pure; no Ray).

Jobs start in FIFO order (the queue); this only picks among the workers idle at that moment:
1. one that already holds the job's checkpoint (the one that used it most recently);
2. else one whose cache has room (loading there evicts nothing), the emptiest first;
3. else one whose least recently used checkpoint, the one the load would evict, is also held by
   another worker (the cluster keeps it), else the one idle longest.
Ties go to the worker idle longest, so work spreads over the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """An idle worker as the scheduler sees it. `loaded`: checkpoint titles, most recently used first;
    `cache_limit`: how many it keeps (the sd_checkpoints_limit setting); `idle_since`: a monotonic
    time, smaller = idle longer."""

    id: str
    loaded: tuple[str, ...]
    cache_limit: int
    idle_since: float


def choose_worker(idle: Sequence[Candidate], checkpoint: str | None,
                  others: Sequence[tuple[str, ...]] = ()) -> Candidate:
    """The idle worker for a job that needs `checkpoint` (a title; None: whichever model is current).
    `others`: the `loaded` tuples of the busy workers (a checkpoint held there is not lost when an
    idle worker evicts it)."""
    if not idle:
        raise ValueError("choose_worker needs at least one idle worker")
    by_idle = sorted(idle, key=lambda worker: worker.idle_since)
    if checkpoint is None:
        return by_idle[0]
    holders = [worker for worker in by_idle if checkpoint in worker.loaded]
    if holders:
        return min(holders, key=lambda worker: (worker.loaded.index(checkpoint), worker.idle_since))
    with_room = [worker for worker in by_idle if len(worker.loaded) < max(1, worker.cache_limit)]
    if with_room:
        return min(with_room, key=lambda worker: (len(worker.loaded), worker.idle_since))

    def kept_elsewhere(worker: Candidate) -> bool:
        evicted = worker.loaded[-1]
        return any(evicted in loaded for loaded in others) or any(
            evicted in other.loaded for other in idle if other.id != worker.id)

    return min(by_idle, key=lambda worker: (not kept_elsewhere(worker), worker.idle_since))
