"""Starting the Ray workers of a server (`--ray-address`, `--ray-local`): Ray installed on first use,
the cluster joined or started, the pool made the owner of generation and merge jobs."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def start_workers(context, args):
    """Connect to (or start) Ray, create the workers and hand the queue's slots to the pool: as many
    jobs run at once as there are live workers. Returns the `WorkerPool` (also `context.cluster`)."""
    from modules.cluster.pool import WorkerPool
    from modules.cluster.ray_runtime import RayOptions, connect

    options = RayOptions.from_args(args)
    if options is None:
        raise ValueError("start_workers needs --ray-address or --ray-local")
    # connect() installs Ray on first use; it imports Ray itself, after setting what Ray reads at import.
    cluster = connect(options)
    pool = WorkerPool(cluster, context, on_capacity=context.jobs.capacity_changed)
    context.cluster = pool
    context.jobs.set_slots(pool.capacity)
    pool.start()
    log.info("Ray: %d worker(s) starting (%s); jobs run there", cluster.desired_workers(), cluster.actor_options())
    return pool
