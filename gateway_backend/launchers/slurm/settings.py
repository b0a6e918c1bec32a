"""The Slurm launcher's settings: every ``c.SlurmLauncher.*`` an admin can set.

The ``help=`` texts are the admin documentation (``docs/configuration.md`` is
generated from them). Values that reach a batch script are checked here, when
the config is loaded, so a bad one is refused at start-up naming its key.
"""

from __future__ import annotations

import os

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Configurable

from ..worker_network import WorkerNetworkSettings
from .script import UnsafeValue, check_directive, check_env_name, check_path, check_word


class SlurmSettings(WorkerNetworkSettings, Configurable):
    """Controller, job, lease and accounting settings of ``SlurmLauncher``."""

    slurm_conf = Unicode(
        "",
        help="""
        ``slurm.conf`` of the cluster to submit to (``SLURM_CONF`` of the Slurm
        commands). Empty: Slurm's default (``/etc/slurm/slurm.conf``).
        """,
        config=True,
    )

    bin_directory = Unicode(
        "",
        help="Directory of ``sbatch``, ``squeue`` and ``scancel``. Empty: found on ``PATH``.",
        config=True,
    )

    command_timeout = Float(
        30.0,
        help="""
        Seconds before a Slurm command counts as failed. A controller that does
        not answer within it makes the pool unavailable: scale-ups wait and are
        retried, nothing counts as a worker failure.
        """,
        config=True,
    )

    status_query = CaselessStrEnum(
        ["fields", "json"],
        default_value="fields",
        help="""
        How the one status query per period asks Slurm. ``fields``: ``squeue --me
        --name=<gateway_id> --states=all --Format=...`` with named fields separated by
        an ASCII unit separator: slurmctld sends only the gateway user's jobs.
        ``json``: ``squeue --json``, which Slurm 22.05 answers with every job of the
        cluster (it ignores all filters): fine on small clusters, a large answer to
        parse every period on busy ones.
        """,
        config=True,
    )

    slurmrestd_url = Unicode(
        "",
        help="""
        Talk to Slurm through ``slurmrestd`` (OpenAPI ``v0.0.38``, Slurm 22.05)
        instead of ``sbatch``/``squeue``/``scancel``. ``unix:///path/to/socket``: a
        slurmrestd with ``rest_auth/local`` running as the gateway's user;
        ``http://host:port`` (or ``https``): ``rest_auth/jwt`` with the token in
        ``slurmrestd_token_file``. Empty: the command-line tools.
        """,
        config=True,
    )

    slurmrestd_token_file = Unicode(
        "",
        help="""
        File holding the JWT (``scontrol token``) sent to slurmrestd as
        ``X-SLURM-USER-TOKEN``, read at every request so it can be renewed in
        place; never logged. Empty: no token (``rest_auth/local``).
        """,
        config=True,
    )

    slurmrestd_user = Unicode(
        "",
        help="``X-SLURM-USER-NAME`` sent with the token. Empty: the gateway's own user.",
        config=True,
    )

    @validate("slurmrestd_url")
    def _check_slurmrestd_url(self, proposal):
        url = proposal["value"]
        if url and not url.startswith(("unix:///", "http://", "https://")):
            raise TraitError(
                f"slurmrestd_url {url!r}: expected unix:///path or http(s)://host:port"
            )
        return url

    partition = Unicode("", help="``--partition`` of worker jobs. Empty: the default.", config=True)

    account = Unicode(
        "",
        help="""
        ``--account`` of worker jobs whose VO has no entry in ``vo_accounts``
        (and no accounting group used as account). Empty: Slurm's default account
        of the gateway's user.
        """,
        config=True,
    )

    vo_accounts = Dict(
        {},
        help="""
        The Slurm account each VO's workers are charged to, e.g. ``{"cms":
        "cms-analysis", "atlas": "usatlas"}``. A VO without an entry uses its
        ``accounting_group`` when ``account_from_accounting_group`` is on, else
        ``account``.
        """,
        config=True,
    )

    account_from_accounting_group = Bool(
        False,
        help="""
        Charge a VO without a ``vo_accounts`` entry to the Slurm account named like
        its ``accounting_group`` (the name shared with HTCondor pools).
        """,
        config=True,
    )

    qos = Unicode("", help="``--qos`` of worker jobs. Empty: the account's default.", config=True)

    constraint = Unicode(
        "", help="``--constraint`` of worker jobs (node features, e.g. ``avx2&el9``).", config=True
    )

    gpu_gres = Unicode(
        "gpu",
        help="""
        Generic resource name GPUs are requested as: a cluster with
        ``worker_gpus = n`` asks ``--gres=<gpu_gres>:n`` (e.g. ``gpu:a100`` for a
        GPU type).
        """,
        config=True,
    )

    time_limit = Unicode(
        "",
        help="""
        ``--time`` of worker jobs (Slurm's format: ``MM``, ``HH:MM:SS``,
        ``D-HH:MM:SS``): the longest a worker runs, whatever else happens. Empty:
        the partition's limit.
        """,
        config=True,
    )

    extra_sbatch = List(
        Unicode(),
        [],
        help="""
        Extra ``sbatch`` options for site policy, one per entry, each written as an
        ``#SBATCH`` line, e.g. ``["--exclusive", "--licenses=cvmfs:1"]``. Entries
        must start with ``-`` and hold no line break. Never put user-controlled
        text here.
        """,
        config=True,
    )

    staging_directory = Unicode(
        help="""
        Directory under which each cluster gets a private (0700) directory with its
        TLS files, its lease file and job logs. It must be on a file system the
        compute nodes share with the gateway (as the submitting user's home or
        scratch is), readable only by the gateway's account; each job copies the
        TLS files into a private temporary directory and removes it when it ends.
        """,
        config=True,
    )

    @default("staging_directory")
    def _default_staging_directory(self) -> str:
        return os.path.join(os.path.expanduser("~"), ".elastic-gateway", "slurm")

    scheduler_address = Unicode(
        help="""
        The gateway proxy's TLS address as compute nodes see it, e.g.
        ``tls://gateway.example.org:8786``. Workers connect there with SNI
        ``daskgateway-<cluster>``. Defaults to the proxy's own TCP address, which
        only works when compute nodes share the gateway's network.
        """,
        config=True,
    )

    worker_host = Unicode(
        "",
        help="Address workers listen on (``--host``). Empty: distributed's default interface.",
        config=True,
    )

    environment = Dict(
        {},
        help="""
        Extra, non-secret environment variables of worker jobs, e.g. ``{"PATH":
        "/opt/dask/bin:/usr/bin:/bin"}``. Jobs are submitted with
        ``--export=NONE``: the gateway's own environment never reaches them, so
        ``PATH`` must find the cluster's ``worker_cmd`` (default ``dask worker``).
        """,
        config=True,
    )

    worker_extra_args = List(
        [],
        help="Extra arguments of ``dask worker`` (e.g. ``--contact-address``), passed literally.",
        config=True,
    )

    nanny = Bool(
        True,
        help="""
        Run a Nanny in worker jobs, so ``client.restart()`` and nanny plugins
        work. As for HTCondor, a nanny preload gives the Nanny the proxy's
        server name (distributed passes ``--scheduler-sni`` to the Worker only).
        """,
        config=True,
    )

    gateway_id = Unicode(
        "elastic-gateway",
        help="""
        Job name (``--job-name``) of every worker job of this gateway; the status
        query, clean-ups and restart reconciliation select by it. Gateways sharing a Slurm cluster
        and account must use different values, and it must stay the same across
        restarts (a restarted gateway finds its jobs by it).
        """,
        config=True,
    )

    status_period = Float(
        5.0,
        help="Seconds between the one ``squeue`` for all of this gateway's jobs.",
        config=True,
    )

    lease_duration = Float(
        600.0,
        help="""
        Seconds a worker job keeps running without the gateway renewing its lease
        (the mtime of ``lease`` in the cluster's staging directory, touched every
        status period). A job whose lease lapsed (the gateway is gone) stops its
        worker and ends; one that starts after its lease lapsed ends at once.
        """,
        config=True,
    )

    max_array_size = Integer(
        500,
        min=1,
        help="""
        Most workers submitted as one job array (one ``sbatch``). Keep it below the
        cluster's ``MaxArraySize``; bigger scale steps use several arrays.
        """,
        config=True,
    )

    @validate("partition", "account", "qos", "gpu_gres")
    def _validate_words(self, proposal):
        return self._checked(proposal, lambda v: check_word(v, proposal.trait.name, empty=True))

    @validate("constraint")
    def _validate_constraint(self, proposal):
        return self._checked(
            proposal, lambda v: check_word(v, "constraint", empty=True, constraint=True)
        )

    @validate("time_limit")
    def _validate_time_limit(self, proposal):
        return self._checked(proposal, lambda v: check_word(v, "time_limit", empty=True, time=True))

    @validate("vo_accounts")
    def _validate_vo_accounts(self, proposal):
        def check(value):
            for vo, account in value.items():
                check_word(str(account), f"the account of VO {vo}")

        return self._checked(proposal, check)

    @validate("extra_sbatch")
    def _validate_extra_sbatch(self, proposal):
        return self._checked(proposal, lambda v: [check_directive(d) for d in v])

    @validate("staging_directory")
    def _validate_staging_directory(self, proposal):
        return self._checked(proposal, lambda v: check_path(v, "the staging directory"))

    @validate("environment")
    def _validate_environment(self, proposal):
        return self._checked(proposal, lambda v: [check_env_name(k) for k in v])

    @validate("gateway_id")
    def _validate_gateway_id(self, proposal):
        return self._checked(proposal, lambda v: check_word(v, "gateway_id"))

    @staticmethod
    def _checked(proposal, check):
        try:
            check(proposal.value)
        except UnsafeValue as exc:
            raise TraitError(f"SlurmLauncher.{proposal.trait.name}: {exc}") from None
        return proposal.value
