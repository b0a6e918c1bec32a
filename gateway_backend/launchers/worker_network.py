"""What remote workers listen on and advertise, per pool.

distributed connects *to* workers: the scheduler for results, ``client.run`` and
work stealing, every worker to the others for task dependencies. Workers on
execute nodes behind a firewall need a known port range opened; behind NAT they
must advertise the address the scheduler can reach (``contact_host``), with
the port they actually listen on. See ``docs/networking.md``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from traitlets import TraitError, Unicode, validate
from traitlets.config import Configurable

from ..commands import nanny_sni_preload, proxy_sni, worker_command
from ..config import ConfigError

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

PORTS = re.compile(r"(\d{1,5})(?::(\d{1,5}))?")
# A host name or IP, or one environment variable of the worker's (``$NODE_PUBLIC_IP``).
CONTACT_HOST = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]{0,127}|[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def check_ports(value: str, where: str) -> str:
    """``""`` (any free port), ``"40000"`` or ``"40000:40100"`` (a range, both included)."""
    if not value:
        return value
    m = PORTS.fullmatch(value)
    low, high = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, -1)
    if not m or not 1024 <= low <= high <= 65535:
        raise ConfigError(
            f"{where} = {value!r}: use a port or a range like '40000:40100' (from 1024 to 65535)"
        )
    return value


def contact_preload(host: str) -> list[str]:
    """Arguments that make a worker advertise ``host`` with the port it listens on.

    distributed's ``--contact-address`` wants the port too, which a worker picking
    one of a range only knows once it listens. A worker preload (Python text, run
    after the worker listens and before it registers) sets it then. ``host`` is a
    checked name or address, or ``$VAR`` read from the worker's environment.
    """
    if host.startswith("$"):
        value = f"__import__('os').environ[{host[1:]!r}]"
    else:
        value = repr(host)
    code = (
        "def dask_setup(worker): worker.contact_address = "
        f"'%s://%s:%d' % (worker.listener.prefix.rstrip(':/') or 'tls', {value}, worker.port)"
    )
    return ["--preload", code]


class WorkerNetworkSettings(Configurable):
    """Listening ports and the advertised address of a pool's workers."""

    worker_ports = Unicode(
        "",
        help="""
        Port or range (``"40000:40100"``) workers listen on (``--worker-port``);
        open it on the execute nodes for connections from the scheduler and
        from other workers of the cluster. Empty: any free port.
        """,
        config=True,
    )

    nanny_ports = Unicode(
        "",
        help="""
        Port or range the workers' Nannies listen on (``--nanny-port``); the
        scheduler connects to it to restart workers. Empty: any free port.
        """,
        config=True,
    )

    contact_host = Unicode(
        "",
        help="""
        Address workers advertise to the scheduler and each other instead of
        their own, for execute nodes behind NAT: a host name or IP, or
        ``$VARIABLE`` of the worker's environment (e.g. one the site sets to
        the node's public address). The port advertised is the one the worker
        listens on, so the NAT must forward ``worker_ports`` unchanged. Empty:
        the worker's own address.
        """,
        config=True,
    )

    @validate("worker_ports", "nanny_ports")
    def _validate_ports(self, proposal):
        try:
            return check_ports(proposal.value, f"{type(self).__name__}.{proposal.trait.name}")
        except ConfigError as exc:
            raise TraitError(str(exc)) from None

    @validate("contact_host")
    def _validate_contact_host(self, proposal):
        if proposal.value and not CONTACT_HOST.fullmatch(proposal.value):
            raise TraitError(
                f"{type(self).__name__}.contact_host = {proposal.value!r}: use a host name, "
                "an IP address or $VARIABLE"
            )
        return proposal.value

    def network_args(self) -> list[str]:
        """``dask worker`` arguments for this pool's ports and advertised address."""
        args = []
        if self.worker_ports:
            args += ["--worker-port", self.worker_ports]
        if self.nanny_ports:
            args += ["--nanny-port", self.nanny_ports]
        if self.contact_host:
            args += contact_preload(self.contact_host)
        return args

    def reachability_hint(self, address: str) -> str:
        """The firewall rule or setting to change when the scheduler cannot reach a worker."""
        kind = type(self).__name__
        port = address.rsplit(":", 1)[-1]
        ports = (
            f"the range {kind}.worker_ports = {self.worker_ports!r}"
            if self.worker_ports
            else f"any port: set {kind}.worker_ports to a range the site opens"
        )
        return (
            f"the nodes must accept TCP on port {port} ({ports}) from the scheduler and "
            f"from other workers; behind NAT, set {kind}.contact_host to the address that "
            "reaches them (docs/networking.md)"
        )


def batch_worker_command(settings: Any, cluster: Cluster, worker_name: str) -> list[str]:
    """``dask worker`` in a batch job (HTCondor, Slurm): through the proxy by SNI, its Nanny
    too, on the pool's interface, ports and advertised address.

    ``settings`` is the pool's launcher: ``scheduler_address``, ``worker_host``,
    ``nanny``, ``worker_extra_args`` and the ``WorkerNetworkSettings``.
    """
    sni = proxy_sni(cluster)
    args = worker_command(
        cluster,
        worker_name,
        settings.scheduler_address,
        host=settings.worker_host or "",
        scheduler_sni=sni,
    )
    if not settings.worker_host:
        i = args.index("--host")
        del args[i : i + 2]
        args[args.index("--dashboard-address") + 1] = ":0"
    args += nanny_sni_preload(sni) if settings.nanny else ["--no-nanny"]
    args += settings.network_args()
    args += [str(a) for a in settings.worker_extra_args]
    return args
