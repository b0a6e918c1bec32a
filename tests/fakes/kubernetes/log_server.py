"""The kubelet's log endpoint, so ``kubectl logs`` / ``GET pods/<name>/log`` work.

The API server answers a pod-log request by calling the node's kubelet at
``https://<InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/<ns>/<pod>/
<container>`` with its kubelet client certificate (``--kubelet-client-certificate``). This
serves that path from the container logs the pod runner writes, over TLS with a self-signed
serving certificate (the test API server does not verify kubelets: no
``--kubelet-certificate-authority``), and accepts only clients whose certificate the
cluster's CA signed, as a kubelet with ``--client-ca-file`` does.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .api import NODE_IP
from .pod_runner import PodRunner

log = logging.getLogger("kubelet.logs")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A serving certificate for ``NODE_IP`` and ``name``; key file mode 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(NODE_IP))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class LogServer:
    """``/containerLogs/<ns>/<pod>/<container>`` of the pods ``runners()`` returns."""

    def __init__(self, runners: Callable[[], list[PodRunner]], root: Path, ca_file: str) -> None:
        self.runners = runners
        self.root = root
        self.ca_file = ca_file
        self._runner: web.AppRunner | None = None

    async def start(self, node_name: str) -> int:
        """Serve on a free loopback port; returns the port (the Node's kubeletEndpoint)."""
        cert, key = _self_signed(self.root / "kubelet-tls", node_name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.verify_mode = ssl.CERT_REQUIRED  # the API server's kubelet client certificate
        context.load_verify_locations(cafile=self.ca_file)
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, NODE_IP, 0, ssl_context=context)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def container_logs(self, request: web.Request) -> web.Response:
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        runner = next((r for r in self.runners() if (r.ns, r.name) == (ns, pod)), None)
        if runner is None or container not in runner.procs:
            raise web.HTTPNotFound(text=f"container {container} of {ns}/{pod} has no log here")
        try:
            data = (runner.dir / f"{container}.log").read_bytes()
        except OSError:
            data = b""
        tail = request.query.get("tailLines")
        if tail is not None and tail.isdigit():
            data = b"".join(data.splitlines(keepends=True)[-int(tail) :]) if int(tail) else b""
        limit = request.query.get("limitBytes")
        if limit is not None and limit.isdigit():
            data = data[-int(limit) :]
        return web.Response(body=data, content_type="text/plain")
