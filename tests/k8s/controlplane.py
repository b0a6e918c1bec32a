"""A real Kubernetes control plane on loopback, for tests.

Starts etcd, kube-apiserver (RBAC on, client-certificate authentication) and
kube-controller-manager (garbage collector on) built from Go modules by
``build-controlplane.sh``, each in its own process group, on 127.0.0.1 with free ports and all
state in a temporary directory. Standard library plus ``cryptography`` only.

    # tests/ is not a package: put tests/k8s on sys.path (or load this file by path), then
    from controlplane import ControlPlane, ensure_built

    with ControlPlane() as cp:                 # builds once if needed, then starts
        os.environ["KUBECONFIG"] = cp.admin_kubeconfig      # cluster-admin (system:masters)
        alice = cp.kubeconfig_for("alice", groups=["team-a"])  # restricted, RBAC decides
        with cp.apiserver_down(30):            # the API server is down for 30 s, same port
            ...
        # or, from asyncio: await asyncio.to_thread(cp.apiserver_outage, 30)
    # Against a real cluster instead, use $KUBECONFIG and skip this module (see README.md).

There is no scheduler and no kubelet: pods stay Pending unless a test binds and runs them.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-controlplane.sh"
LOCALHOST = "127.0.0.1"

__all__ = ["ControlPlane", "ControlPlaneError", "ensure_built"]


class ControlPlaneError(RuntimeError):
    pass


def ensure_built(timeout: float | None = None) -> Path:
    """Run build-controlplane.sh (instant when already built) and return its bin/ directory.

    ``ELASTIC_GATEWAY_K8S_BIN`` short-circuits this with a directory of prebuilt binaries.
    A cold build takes a long time (see README.md); its progress goes to stderr.
    """
    override = os.environ.get("ELASTIC_GATEWAY_K8S_BIN")
    if override:
        return Path(override)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Certificates


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _CA:
    """A throwaway certificate authority (EC P-256: fast to generate)."""

    def __init__(self, common_name: str = "elastic-gateway-test-ca") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """Return (cert PEM, key PEM). CN is the Kubernetes user name, O the groups."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if dns_names or ips:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _pem_cert(cert), _pem_key(key)


# --------------------------------------------------------------------------------------------
# Processes


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOCALHOST, port))
        except OSError:
            return False
        return True


_PR_SET_PDEATHSIG = 1
try:  # loaded here, not in the forked child (no imports between fork and exec)
    import ctypes

    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except Exception:  # pragma: no cover
    _LIBC = None


def _child_setup() -> None:
    """Run in the child before exec: own process group; die with the parent when possible."""
    os.setsid()
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_setup_no_pdeathsig() -> None:
    os.setsid()


def child_preexec():
    """``preexec_fn`` for a child in its own session that dies with this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only used
    from the main thread (a restart from asyncio.to_thread must not die with its
    worker thread).
    """
    on_main = threading.current_thread() is threading.main_thread()
    return _child_setup if on_main else _child_setup_no_pdeathsig


class _Proc:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
        log.flush()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec(),
                close_fds=True,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        p = self.popen
        if p is None:
            return
        pgid = p.pid  # setsid() made the child a group leader
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (the leader or anything it spawned) gets SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        self.popen = None

    def tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(data[-lines:])


# --------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1."""

    SERVICE_CIDR = "10.96.0.0/16"
    SERVICE_IP = "10.96.0.1"  # the first address: the `kubernetes` Service
    SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        *,
        workdir: str | os.PathLike | None = None,
        keep_workdir: bool | None = None,
        apiserver_args: Iterable[str] = (),
        controller_manager_args: Iterable[str] = (),
        controllers: str = "*",
        start_timeout: float = 180.0,
    ) -> None:
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        if keep_workdir is None:
            keep_workdir = os.environ.get("ELASTIC_GATEWAY_K8S_KEEP", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self.extra_apiserver_args = list(apiserver_args)
        self.extra_kcm_args = list(controller_manager_args)
        self.controllers = controllers
        self.start_timeout = start_timeout
        self.timings: dict[str, float] = {}
        self._procs: dict[str, _Proc] = {}
        self._ca: _CA | None = None
        self._lock = threading.RLock()
        self._started = False
        self.etcd_port = self.apiserver_port = self.kcm_port = self.etcd_peer_port = 0

    # -- public properties ---------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.apiserver_port}"

    @property
    def ca_file(self) -> str:
        return str(self._pki / "ca.crt")

    @property
    def admin_kubeconfig(self) -> str:
        return str(self._pki / "admin.kubeconfig")

    @property
    def logs_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "logs"

    @property
    def _pki(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        with self._lock:
            if self._started:
                return self
            self._started = True
            atexit.register(self.stop)  # a forgotten stop() still ends the processes
            t0 = time.monotonic()
            try:
                self._start()
            except BaseException:
                self._dump_logs()
                self.stop(_failed=True)
                raise
            self.timings["start_total"] = time.monotonic() - t0
            return self

    def _start(self) -> None:
        if self._bin_dir is None:
            t = time.monotonic()
            self._bin_dir = ensure_built()
            self.timings["ensure_built"] = time.monotonic() - t
        for b in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not os.access(self._bin_dir / b, os.X_OK):
                raise ControlPlaneError(f"missing binary {self._bin_dir / b}; run {BUILD_SCRIPT}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="eg-k8s-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._pki.mkdir(mode=0o700, exist_ok=True)
        self.etcd_port, self.etcd_peer_port, self.apiserver_port, self.kcm_port = _free_ports(4)

        t = time.monotonic()
        self._write_pki()
        self.timings["pki"] = time.monotonic() - t

        t = time.monotonic()
        self._procs["etcd"] = _Proc("etcd", self._etcd_argv(), self.logs_dir / "etcd.log")
        self._procs["etcd"].start()
        self._wait("etcd", lambda: self._http_ok(f"http://{LOCALHOST}:{self.etcd_port}/health"), 60)
        self.timings["etcd_ready"] = time.monotonic() - t

        t = time.monotonic()
        self._procs["kube-apiserver"] = _Proc(
            "kube-apiserver", self._apiserver_argv(), self.logs_dir / "kube-apiserver.log"
        )
        self._procs["kube-apiserver"].start()
        self._wait_apiserver_ready(self.start_timeout)
        self.timings["apiserver_ready"] = time.monotonic() - t

        t = time.monotonic()
        self._procs["kube-controller-manager"] = _Proc(
            "kube-controller-manager",
            self._kcm_argv(),
            self.logs_dir / "kube-controller-manager.log",
        )
        self._procs["kube-controller-manager"].start()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its self-signed serving cert, loopback only
        self._wait(
            "kube-controller-manager",
            lambda: self._http_ok(f"https://{LOCALHOST}:{self.kcm_port}/healthz", ctx),
            self.start_timeout,
        )
        # The token and service-account controllers are running once `default` has its SA;
        # without it the ServiceAccount admission plugin rejects pods in that namespace.
        self.wait_for_service_account("default", timeout=self.start_timeout)
        self.timings["controller_manager_ready"] = time.monotonic() - t

    def stop(self, *, _failed: bool = False) -> None:
        """Stop every process started here (SIGTERM to each group, then SIGKILL). Idempotent."""
        with self._lock:
            t = time.monotonic()
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                proc = self._procs.get(name)
                if proc is not None:
                    proc.stop()
            self.timings["stop"] = time.monotonic() - t
            self._started = False
            atexit.unregister(self.stop)
            if self.workdir is not None and self._own_workdir:
                if self.keep_workdir or _failed:
                    print(f"control plane workdir kept: {self.workdir}", file=sys.stderr)
                else:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    # -- API server outage ---------------------------------------------------------------
    def stop_apiserver(self, grace: float = 2.0) -> None:
        """Stop kube-apiserver only; etcd and the controller manager keep running.

        SIGTERM closes its listener at once; what is left after ``grace`` seconds is killed.
        (Its graceful shutdown otherwise waits up to --request-timeout, 60 s, for open HTTP/2
        connections such as the controller manager's watches, which it keeps serving.)
        """
        with self._lock:
            t = time.monotonic()
            self._procs["kube-apiserver"].stop(timeout=grace)
            self.timings["apiserver_stop"] = time.monotonic() - t

    def kill_apiserver(self) -> None:
        """SIGKILL kube-apiserver (a crash: no graceful shutdown); ``start_apiserver`` restarts."""
        with self._lock:
            popen = self._procs["kube-apiserver"].popen
            if popen is not None and popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)

    def apiserver_pid(self) -> int:
        """The running kube-apiserver's pid (to pause it: SIGSTOP, a hung API server)."""
        with self._lock:
            popen = self._procs["kube-apiserver"].popen
            if popen is None or popen.poll() is not None:
                raise RuntimeError("kube-apiserver is not running")
            return popen.pid

    def start_apiserver(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start kube-apiserver again with the same arguments, on the same port."""
        with self._lock:
            proc = self._procs["kube-apiserver"]
            if proc.running():
                return
            deadline = time.monotonic() + 30
            while not _port_is_free(self.apiserver_port):
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"port {self.apiserver_port} is still in use")
                time.sleep(0.2)
            t = time.monotonic()
            proc.start()
            if wait:
                self._wait_apiserver_ready(timeout or self.start_timeout)
                self.timings["apiserver_restart_ready"] = time.monotonic() - t

    @contextlib.contextmanager
    def apiserver_down(self, seconds: float | None = None, grace: float = 2.0) -> Iterator[None]:
        """Stop the API server for the block (at least ``seconds``), then start it again."""
        t = time.monotonic()
        self.stop_apiserver(grace)
        try:
            yield
            if seconds is not None:
                time.sleep(max(0.0, seconds - (time.monotonic() - t)))
        finally:
            self.start_apiserver()

    def apiserver_outage(self, seconds: float) -> None:
        """Blocking: the API server is down for ``seconds``, then ready again on the same port."""
        with self.apiserver_down(seconds):
            pass

    # -- kubeconfigs ---------------------------------------------------------------------
    def kubeconfig_for(
        self, user: str, groups: Sequence[str] = (), path: str | os.PathLike | None = None
    ) -> str:
        """Write a kubeconfig authenticating as ``user`` in ``groups`` via a client certificate.

        Nothing is granted: RBAC decides what it may do. Returns the path.
        """
        assert self._ca is not None, "start() first"
        cert, key = self._ca.issue(user, groups)
        if path is None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
            path = self._pki / f"user-{safe}-{os.urandom(3).hex()}.kubeconfig"
        self._write_kubeconfig(Path(path), user, cert, key)
        return str(path)

    def wait_for_service_account(
        self, namespace: str, name: str = "default", timeout: float = 60.0
    ) -> None:
        """Wait until a ServiceAccount exists (pods in a new namespace need `default`)."""
        url = f"{self.url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        self._wait(f"serviceaccount {namespace}/{name}", lambda: self._http_ok(url), timeout)

    def is_ready(self) -> bool:
        return self._http_ok(f"{self.url}/readyz")

    def logs(self, name: str, lines: int = 60) -> str:
        proc = self._procs.get(name)
        return proc.tail(lines) if proc else ""

    # -- internals -----------------------------------------------------------------------
    def _write_pki(self) -> None:
        pki = self._pki
        self._ca = ca = _CA()
        (pki / "ca.crt").write_bytes(_pem_cert(ca.cert))
        _write_private(pki / "ca.key", _pem_key(ca.key))
        cert, key = ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=[LOCALHOST, self.SERVICE_IP],
        )
        (pki / "apiserver.crt").write_bytes(cert)
        _write_private(pki / "apiserver.key", key)
        # Front proxy (aggregation layer): its own CA, as kubeadm sets it up. Also lets
        # components that delegate authentication find a complete extension-apiserver-
        # authentication ConfigMap.
        fp = _CA("elastic-gateway-test-front-proxy-ca")
        (pki / "front-proxy-ca.crt").write_bytes(_pem_cert(fp.cert))
        cert, key = fp.issue("front-proxy-client")
        (pki / "front-proxy-client.crt").write_bytes(cert)
        _write_private(pki / "front-proxy-client.key", key)
        cert, key = ca.issue("kube-apiserver-kubelet-client", ["system:masters"])
        (pki / "apiserver-kubelet-client.crt").write_bytes(cert)
        _write_private(pki / "apiserver-kubelet-client.key", key)
        # Service-account token signing key (RSA, as the token controller expects).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(
            pki / "sa.key",
            sa.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        )
        (pki / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        cert, key = ca.issue("kubernetes-admin", ["system:masters"])
        (pki / "admin.crt").write_bytes(cert)
        _write_private(pki / "admin.key", key)
        self._write_kubeconfig(Path(self.admin_kubeconfig), "kubernetes-admin", cert, key)
        cert, key = ca.issue("system:kube-controller-manager")
        self._write_kubeconfig(
            pki / "controller-manager.kubeconfig", "system:kube-controller-manager", cert, key
        )

    def _write_kubeconfig(self, path: Path, user: str, cert: bytes, key: bytes) -> None:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "elastic-gateway-test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(_pem_cert(self._ca.cert)),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [
                {
                    "name": "elastic-gateway-test",
                    "context": {"cluster": "elastic-gateway-test", "user": user},
                }
            ],
            "current-context": "elastic-gateway-test",
            "preferences": {},
        }
        # JSON is YAML: kubectl, client-go and kubernetes_asyncio all read it.
        _write_private(path, json.dumps(cfg, indent=2).encode())

    def _etcd_argv(self) -> list[str]:
        peer = f"http://{LOCALHOST}:{self.etcd_peer_port}"
        client = f"http://{LOCALHOST}:{self.etcd_port}"
        return [
            str(self._bin_dir / "etcd"),
            "--name=eg-test",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=eg-test={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # throwaway data: skip fsync, much faster on shared disks
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self._pki
        return [
            str(self._bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{LOCALHOST}:{self.etcd_port}",
            f"--bind-address={LOCALHOST}",
            f"--advertise-address={LOCALHOST}",
            # The `kubernetes` Service's Endpoints may not hold a loopback address (the lease
            # reconciler fails validation, logs errors forever and stalls shutdown by ~10 s).
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",  # added to the default set
            "--allow-privileged=true",
            f"--service-cluster-ip-range={self.SERVICE_CIDR}",
            f"--service-account-issuer={self.SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _kcm_argv(self) -> list[str]:
        pki = self._pki
        kc = str(pki / "controller-manager.kubeconfig")
        return [
            str(self._bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOCALHOST}",
            f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--leader-elect=false",
            f"--controllers={self.controllers}",
            "--enable-garbage-collector=true",
            # Each controller acts as its own service account, bound by the bootstrap RBAC
            # policy (system:controller:*), as in a real cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={self.SERVICE_CIDR}",
            "--profiling=false",
            "--v=1",
            *self.extra_kcm_args,
        ]

    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(self._pki / "admin.crt", self._pki / "admin.key")
        return ctx

    def _http_ok(self, url: str, ctx: ssl.SSLContext | None = None) -> bool:
        if ctx is None and url.startswith("https://"):
            ctx = self._admin_ssl()
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                return 200 <= r.status < 300
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _wait_apiserver_ready(self, timeout: float) -> None:
        self._wait("kube-apiserver /readyz", self.is_ready, timeout)

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            for name, proc in self._procs.items():
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {proc.popen.returncode} while waiting for {what}:\n"
                        + proc.tail()
                    )
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.25)

    def _dump_logs(self) -> None:
        for name, proc in self._procs.items():
            print(f"---- {name} ({proc.log_path}) ----\n{proc.tail()}", file=sys.stderr)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


if __name__ == "__main__":  # python tests/k8s/controlplane.py: start, print, wait for Ctrl-C
    with ControlPlane(keep_workdir=False) as cp:
        print(f"KUBECONFIG={cp.admin_kubeconfig}")
        print(f"server {cp.url}; timings {json.dumps(cp.timings)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
