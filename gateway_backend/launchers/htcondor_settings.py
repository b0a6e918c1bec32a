"""The HTCondor launcher's settings: every ``c.HTCondorLauncher.*`` an admin can set.

The ``help=`` texts are the admin documentation (``docs/configuration.md`` is
generated from them). Values that reach a submit description are checked here,
when the config is loaded, so a bad one is refused at start-up naming its key.
"""

from __future__ import annotations

import os
import re

from dask_gateway_server.traitlets import Callable as CallableTrait
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Configurable

from .htcondor_quoting import UnsafeValue, arguments_value, check_literal, environment_value
from .worker_network import WorkerNetworkSettings


class HTCondorSettings(WorkerNetworkSettings, Configurable):
    """Schedd, job, lease and accounting settings of ``HTCondorLauncher``."""

    schedd_name = Unicode(
        "",
        help="Name of the schedd to submit to. Empty: the local schedd of this machine.",
        config=True,
    )

    collector = Unicode(
        "",
        help="Collector (host[:port]) used to locate ``schedd_name``. Empty: from HTCondor config.",
        config=True,
    )

    schedd_factory = CallableTrait(
        None,
        allow_none=True,
        help="""
        A callable returning an ``htcondor2.Schedd``-like object, instead of
        locating one by ``schedd_name``/``collector``. For custom location
        logic and for testing against a stand-in.
        """,
        config=True,
    )

    idtoken_directory = Unicode(
        "",
        help="""
        Directory holding the IDTOKEN(s) the gateway authenticates to the schedd
        with (sets HTCondor's ``SEC_TOKEN_DIRECTORY`` for this process). Empty:
        HTCondor's own configuration decides.
        """,
        config=True,
    )

    scheduler_address = Unicode(
        help="""
        The gateway proxy's TLS address as execute nodes see it, e.g.
        ``tls://gateway.example.org:8786``. Workers connect there with SNI
        ``daskgateway-<cluster>``. Defaults to the proxy's own TCP address,
        which only works when execute nodes share the gateway's network.
        """,
        config=True,
    )

    worker_executable = Unicode(
        "/usr/bin/env",
        help="""
        Executable of worker jobs, run in place (``transfer_executable = false``);
        the cluster's ``worker_cmd`` (default ``dask worker``) is its arguments,
        so ``/usr/bin/env`` finds ``dask`` on the job's PATH.
        """,
        config=True,
    )

    worker_host = Unicode(
        "",
        help="Address workers listen on (``--host``). Empty: distributed's default interface.",
        config=True,
    )

    container_mode = CaselessStrEnum(
        ["none", "container", "apptainer"],
        default_value="apptainer",
        help="""
        How the worker image (a profile's ``image``, else ``container_image``)
        runs: ``apptainer`` sets ``+SingularityImage`` as OSG and most HEP
        pools expect, ``container`` uses the container universe
        (``container_image``), ``none`` runs on the execute node directly (and
        refuses clusters of profiles with an image). Without an image, jobs run
        directly in every mode.
        """,
        config=True,
    )

    container_image = Unicode(
        "", help="The worker image (e.g. a /cvmfs path or docker:// URL).", config=True
    )

    request_disk = Unicode("1 GB", help="``request_disk`` of worker jobs.", config=True)

    environment = Dict(
        {},
        help="""
        Extra, non-secret environment variables of worker jobs (visible in the job
        ad). Values are passed literally: ``$`` is not an HTCondor macro here, and a
        value with a line break, ``$$`` or ``$(DOLLAR)`` is refused at start-up.
        """,
        config=True,
    )

    extra_submit = Dict(
        {},
        help="""
        Extra submit commands for site policy, e.g. ``{"requirements":
        "OpSysMajorVer == 9", "+DESIRED_Sites": '"T2_US_Nebraska"'}``. The only
        values written verbatim (macros expand, ClassAd strings need their quotes):
        never put user-controlled text here.
        """,
        config=True,
    )

    staging_directory = Unicode(
        help="""
        Directory under which each cluster gets a private (0700) directory with
        the TLS files its jobs transfer as encrypted input files, and job logs.
        """,
        config=True,
    )

    @default("staging_directory")
    def _default_staging_directory(self) -> str:
        return os.path.join(os.path.expanduser("~"), ".elastic-gateway", "htcondor")

    @validate("staging_directory")
    def _validate_staging_directory(self, proposal):
        # transfer_input_files is a comma-separated list: HTCondor would split the
        # path and hold every job with a transfer failure.
        if "," in proposal.value:
            raise TraitError(
                f"HTCondorLauncher.staging_directory {proposal.value!r} contains a comma, "
                "which HTCondor's transfer_input_files cannot express; choose a path without one"
            )
        return proposal.value

    gateway_id = Unicode(
        "elastic-gateway",
        help="""
        Value of the ``DaskGatewayInstance`` attribute on every job of this
        gateway; queries, leases and clean-ups select by it. Gateways sharing
        a schedd must use different values. It must stay the same across
        restarts (a restarted gateway finds its jobs by it), so the default is
        a fixed name, not the host name, which changes when the gateway moves.
        """,
        config=True,
    )

    status_period = Float(
        5.0,
        help="Seconds between the one schedd query (and one lease renewal) for all jobs.",
        config=True,
    )

    status_full_period = Float(
        300.0,
        help="""
        Seconds between full schedd queries (every job of this gateway). In
        between, each status period asks only for jobs whose status changed
        since the previous query (by ``EnteredCurrentStatus`` against the
        schedd's ``ServerTime``) and those leaving the queue, so a period costs
        little whatever the number of jobs; a lease renewal that matches
        another number of jobs than expected makes the next query a full one.
        Idle reasons (``LastRejMatchReason``) of jobs whose status did not
        change are refreshed only by full queries. 0: every query is full.
        """,
        config=True,
    )

    lease_duration = Float(
        600.0,
        help="""
        Seconds a job lives without the gateway renewing its lease. A job whose
        lease lapsed (the gateway is gone) is removed by its ``periodic_remove``.
        """,
        config=True,
    )

    held_job_timeout = Float(
        600.0,
        help="Seconds a held job stays before its own ``periodic_remove`` removes it.",
        config=True,
    )

    schedd_timeout = Float(30.0, help="Seconds before a schedd call counts as failed.", config=True)

    remove_reason = Unicode(
        "removed by Elastic Gateway", help="Reason recorded on jobs the gateway removes."
    )

    worker_extra_args = List(
        [],
        help="""
        Extra arguments of ``dask worker`` (e.g. ``--contact-address``), passed
        literally like ``environment`` values.
        """,
        config=True,
    )

    nanny = Bool(
        True,
        help="""
        Run a Nanny in worker jobs, so ``client.restart()`` and nanny plugins
        (``PipInstall``, ``Environ``, ``UploadDirectory``) work. The Nanny
        reaches the scheduler through the gateway proxy by a nanny preload that
        gives it the proxy's server name (distributed passes ``--scheduler-sni``
        to the Worker only). Without a Nanny, ``client.restart()`` fails with a
        message and nanny plugins are refused by distributed.
        """,
        config=True,
    )

    use_accounting_group = Bool(
        True,
        help="Set ``accounting_group``/``accounting_group_user`` from the cluster's VO.",
        config=True,
    )

    accounting_user_pattern = Unicode(
        r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}",
        help="""
        Regular expression the whole user name of a cluster's owner must match to
        become its jobs' ``accounting_group_user`` (only when the cluster's VO has an
        ``accounting_group``). Others are refused when they create a cluster, with
        a message naming this setting. The default, letters, digits, ``_`` and
        ``-`` (at most 64), leaves out ``.``, because HTCondor reads
        ``AccountingGroup`` (``<group>.<user>``) up to its last dot as the group, so
        a user named ``sub.alice`` would be charged to the subgroup
        ``<group>.sub``, and ``@``, which ends the group part of a submitter name.
        Widen it (e.g. for e-mail-like names) only where no subgroups exist. Whatever
        it allows, names with whitespace, control characters, ``$`` or non-ASCII
        characters are refused.
        """,
        config=True,
    )

    @validate("accounting_user_pattern")
    def _validate_accounting_user_pattern(self, proposal):
        try:
            re.compile(proposal.value)
        except re.error as exc:
            raise TraitError(
                f"HTCondorLauncher.accounting_user_pattern {proposal.value!r} is not a "
                f"regular expression: {exc}"
            ) from None
        return proposal.value

    @validate("environment", "worker_extra_args", "container_image")
    def _validate_literal_settings(self, proposal):
        # Admin values reach the submit description too: refused here, naming the key.
        name, value = proposal.trait.name, proposal.value
        try:
            if name == "environment":
                environment_value({k: str(v) for k, v in value.items()})
            elif name == "worker_extra_args":
                arguments_value([str(a) for a in value])
            else:
                check_literal(value, "the image")
        except UnsafeValue as exc:
            raise TraitError(f"HTCondorLauncher.{name}: {exc}") from None
        return value
