"""Per-cluster configuration: upstream's ClusterConfig, ready for distributed 2026.

A cluster's config is stored with its record, so what a profile chose (the
software environment, GPUs, lifetimes) stays with the cluster across gateway
restarts and config changes.
"""

from __future__ import annotations

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.traitlets import Command
from traitlets import Enum, Float, Integer, Unicode


class ElasticClusterConfig(ClusterConfig):
    """Cluster configuration for the Elastic Gateway backend.

    distributed 2026 ships no ``dask-scheduler``/``dask-worker`` executables, so
    the defaults use the ``dask`` command's subcommands.
    """

    scheduler_cmd = Command(
        ["dask", "scheduler"], help="Command that starts a Dask scheduler.", config=True
    )

    worker_cmd = Command(["dask", "worker"], help="Command that starts a Dask worker.", config=True)

    worker_gpus = Integer(
        0,
        min=0,
        help="""
        GPUs per worker (HTCondor ``request_gpus``, the Kubernetes pool's
        ``gpu_resource``, devices of the local launcher's ``gpu_devices``).
        Workers advertise them as the Dask resource ``GPU``, so
        ``client.submit(f, resources={"GPU": 1})`` runs only on them.
        """,
        config=True,
    )

    worker_reachability_timeout = Float(
        5,
        min=0,
        help="""
        Seconds the scheduler waits to open a connection back to a worker that
        registered. A worker it cannot reach (a firewall or NAT between them) is
        removed, and the analyst reads which address and port to open, or
        which setting to change (``docs/networking.md``). 0: no check.
        """,
        config=True,
    )

    profile = Unicode(
        "", help="The profile the cluster was created with (set from the cluster options)."
    )

    image = Unicode(
        "",
        help="""
        Container image of the cluster's pods and HTCondor jobs (a profile's
        ``image``); empty: the launcher's own ``image``/``container_image``.
        """,
        config=True,
    )

    python = Unicode(
        "",
        help="""
        Python interpreter the local launcher runs the cluster's scheduler and
        workers with (a profile's ``python``, e.g. a conda environment's
        ``bin/python``); empty: the gateway's own.
        """,
        config=True,
    )

    idle_timeout = Float(
        3600,
        min=0,
        help="""
        Seconds a cluster may run no task before its scheduler stops it, with
        an event saying so (0: never). One hour by default, so a forgotten
        cluster does not hold its workers all night; profiles may set their own.
        """,
        config=True,
    )

    max_lifetime = Float(
        7 * 86400,
        min=0,
        help="""
        Seconds after which a cluster is stopped however busy it is, with an
        event saying so (0: never). A week by default, a bound on what a
        runaway adaptive cluster can hold; profiles may set their own.
        """,
        config=True,
    )

    no_client_timeout = Float(
        3600,
        min=0,
        help="""
        Seconds a cluster may run with no Dask ``Client`` connected before its
        scheduler stops it, with an event saying so (0: never). Catches the
        clusters of notebooks that died without closing them (an OOM kill, a
        culled server), even while they still run work; separate from
        ``idle_timeout``. One hour by default; profiles may set their own.
        """,
        config=True,
    )

    detached_no_client_timeout = Float(
        86400,
        min=0,
        help="""
        ``no_client_timeout`` of a cluster created with
        ``ElasticGateway.new_cluster(shutdown_on_close=False)``: its owner means
        to come back to it later (0: never stopped for lack of a client). A day
        by default; profiles may set their own.
        """,
        config=True,
    )

    tick_interval = Float(
        0.5,
        min=0,
        help="""
        Seconds between the event-loop health ticks of the cluster's scheduler
        and workers (distributed's ``distributed.admin.tick.interval``, 20 ms
        by default). At 20 ms the ticks are most of what an idle scheduler
        costs: about 2.4% of a core each, measured, so a hundred idle clusters
        keep two cores busy; at 0.5 s about 0.5%. A blocked event loop is still
        reported (after ``distributed.admin.tick.limit``, 3 s). 0: distributed's
        default; a ``DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL`` in the cluster's
        ``environment`` wins.
        """,
        config=True,
    )

    version_mismatch = Enum(
        ["warn", "refuse"],
        default_value="warn",
        help="""
        What the scheduler does when a connecting client or a registering worker
        has other versions of Python (minor), dask, distributed, cloudpickle or
        msgpack than the scheduler: ``warn`` (the client gets a warning naming
        the versions and what to do; the worker joins) or ``refuse`` (the
        client's ``Client()`` raises that message; the worker is removed).
        Either way the cluster's events say so.
        """,
        config=True,
    )
