"""The local launcher's settings: every ``c.LocalLauncher.*`` an admin can set.

The ``help=`` texts are the admin documentation (``docs/configuration.md`` is
generated from them). ``LocalLauncher`` inherits them, and the start-up checks
of their combinations, from ``LocalSettings``.
"""

from __future__ import annotations

import os
import tempfile

from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default
from traitlets.config import Configurable

from ..config import ConfigError
from .local_isolation import SECRET_ENV


class LocalSettings(Configurable):
    """Accounts, directories, environment and fork-server settings of ``LocalLauncher``."""

    work_directory = Unicode(
        help="""
        Directory under which each cluster gets a private working directory
        (TLS files, logs). Defaults to a new temporary directory. Set it to a
        persistent path so that a restarted gateway can find its clusters' logs.
        With ``run_as = "user"`` it is made mode 0711 (users may pass through it
        to their clusters' directories but not list it), and every directory
        above it must let other users pass (mode o+x): keep it out of the
        gateway's state directory, which holds its secrets.
        """,
        config=True,
    )

    @default("work_directory")
    def _default_work_directory(self) -> str:
        return tempfile.mkdtemp(prefix="elastic-gateway-")

    run_as = CaselessStrEnum(
        ["gateway", "user"],
        "gateway",
        help="""
        Whose OS account runs a cluster's scheduler and workers.

        ``"user"``: the account named like the gateway user (exactly; names that
        are not plain account names, unknown accounts and system accounts are
        refused). The gateway must run as root. Each cluster's directory belongs
        to its user (mode 0700), so no user can read another's TLS keys, logs or
        spilled data, nor anything of the gateway.

        ``"gateway"``: the gateway's own account, shared by every user. Allowed
        only with ``single_user`` or ``allow_shared_local_user``.
        """,
        config=True,
    )

    single_user = Unicode(
        "",
        help="""
        With ``run_as = "gateway"``: the one gateway user whose clusters this
        launcher runs; other users' cluster requests are refused, saying so.
        ``elastic-gateway serve`` sets it to the OS user running the gateway
        (the one who can read its password).
        """,
        config=True,
    )

    allow_shared_local_user = Bool(
        False,
        help="""
        With ``run_as = "gateway"``: run *every* gateway user's clusters as the
        gateway's own OS account. This gives away user separation: any user's
        code (a task, a worker plugin) can read every other user's cluster TLS
        keys and logs and the gateway's own secrets (database key, proxy token,
        passwords) and state, and connect to their schedulers to read their data
        or run code in their clusters. Only for gateways whose users all trust
        each other and may act as the gateway's admin.
        """,
        config=True,
    )

    min_uid = Integer(
        1000,
        min=1,
        help="""
        With ``run_as = "user"``: lowest uid a cluster may run as. Users whose OS
        account has a lower uid (root, daemon and other system accounts) are refused.
        """,
        config=True,
    )

    inherited_environment = List(
        ["PATH", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LANG", "LC_ALL", "HOME", "TMPDIR"],
        help="""
        Environment variables scheduler and worker processes inherit from the
        gateway. Names that look like credentials (``*TOKEN*``, ``*SECRET*``,
        ``*PASSW*``, ``*ENCRYPT*``, ``*_KEY(S)``, ``KRB5*``...) are refused at
        start-up: users' code can read its environment. With ``run_as = "user"``,
        ``HOME``, ``USER`` and ``LOGNAME`` are the user's.
        """,
        config=True,
    )

    stop_grace_period = Float(
        5.0,
        help="Seconds to wait after SIGTERM before a process is killed with SIGKILL.",
        config=True,
    )

    fork_server = Bool(
        True,
        help="""
        Start schedulers and workers by forking a process that has already
        imported distributed, instead of a new ``dask scheduler``/``dask worker``
        process each: cluster start and scale-up no longer pay an interpreter
        start and import per process. Used when the cluster's ``scheduler_cmd``/
        ``worker_cmd`` are the defaults. With ``run_as = "user"`` each user gets
        their own fork server, started as that user.
        """,
        config=True,
    )

    nanny_start_method = CaselessStrEnum(
        ["fork", "spawn", "forkserver"],
        "fork",
        help="""
        ``distributed.worker.multiprocessing-method`` for workers started by the
        fork server: ``fork`` lets each nanny fork its worker (fast) instead of
        starting a new interpreter (``spawn``, distributed's default).
        """,
        config=True,
    )

    gpu_devices = List(
        Unicode(),
        None,
        allow_none=True,
        help="""
        GPU devices this pool gives workers of clusters with ``worker_gpus``, as
        ``CUDA_VISIBLE_DEVICES`` values (indices or UUIDs, e.g. ``["0", "1"]``, or
        MIG UUIDs); each device serves one worker at a time. None (the default):
        the devices ``nvidia-smi -L`` lists, none without it.
        """,
        config=True,
    )

    host = Unicode(
        "127.0.0.1",
        help="Address schedulers and workers listen on. Keep it on loopback unless "
        "workers on other machines must reach the scheduler directly.",
        config=True,
    )

    def _check_settings(self) -> None:
        """Refuse, at start-up, settings that would leak the gateway's secrets to users."""
        secret = [n for n in self.inherited_environment if SECRET_ENV.search(n)]
        if secret:
            raise ConfigError(
                f"LocalLauncher.inherited_environment lists {secret}: these look like "
                "credentials of the gateway, and cluster processes run users' code, which "
                "can read its environment. Remove them; give clusters what they need with "
                "ElasticClusterConfig.environment"
            )
        if self.run_as == "user" and os.geteuid() != 0:
            raise ConfigError(
                "LocalLauncher.run_as = 'user' runs each cluster as its user's OS account, "
                f"which needs the gateway to run as root (it runs as uid {os.geteuid()}): "
                "start it as root or use LocalLauncher.run_as = 'gateway'"
            )
        if self.run_as == "gateway" and not (self.allow_shared_local_user or self.single_user):
            raise ConfigError(
                "LocalLauncher.run_as = 'gateway' runs every user's clusters as the gateway's "
                "own OS account, so any user's code could read other users' cluster keys and "
                "the gateway's secrets and connect to their schedulers. Set "
                "LocalLauncher.run_as = 'user' (an OS account per user; gateway as root), "
                "LocalLauncher.single_user = '<the one user>', or, accepting all of that, "
                "LocalLauncher.allow_shared_local_user = True"
            )
