"""The analyst's data credentials, forwarded to their cluster's workers.

The channel: the notebook's own Dask client, which holds the cluster's TLS
credentials (given by the gateway to the cluster's owner only), registers a
worker plugin with the credential bytes on the scheduler. The scheduler hands
it, over the cluster's TLS, to every worker, also to workers that join later;
registering again replaces it everywhere within seconds, with no restart. The
credentials never pass through the gateway, a job ad, a pod spec, a command
line or an environment variable; they live in the scheduler's memory and in
0600 files in each worker's private directory, and end with the cluster.

Discovery follows the standard places: X509 proxy ``$X509_USER_PROXY``, else
``/tmp/x509up_u<uid>``; WLCG bearer token ``$BEARER_TOKEN``, ``$BEARER_TOKEN_FILE``,
``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "elastic-gateway-credentials"
MAX_BYTES = 256 * 1024  # per file: proxies and tokens are a few KiB
MAX_FILES = 16
X509 = "x509up"
TOKEN = "bt"


@dataclass
class Credentials:
    """What is forwarded: file name -> bytes, and the variables that point at them."""

    files: dict[str, bytes] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)  # variable -> file name
    sources: dict[str, str] = field(default_factory=dict)  # file name -> where it came from

    def summary(self) -> dict[str, dict]:
        """Per file: where it came from and when it expires (None: unknown), no content."""
        out = {}
        for name, data in self.files.items():
            expires = expiry_of(name, data)
            out[name] = {
                "source": self.sources.get(name, ""),
                "bytes": len(data),
                "expires": expires.isoformat() if expires else None,
            }
        return out


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path} is larger than {MAX_BYTES} bytes: not a credential")
    return data


def discover_x509() -> tuple[bytes, str] | None:
    """The X509 proxy the grid tools would use, and where it was found."""
    candidates = [os.environ.get("X509_USER_PROXY", ""), f"/tmp/x509up_u{os.getuid()}"]
    for path in candidates:
        if path and os.path.isfile(path):
            return _read(path), path
    return None


def discover_token() -> tuple[bytes, str] | None:
    """The bearer token per WLCG bearer-token discovery, and where it was found."""
    if os.environ.get("BEARER_TOKEN"):
        return os.environ["BEARER_TOKEN"].strip().encode(), "$BEARER_TOKEN"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = [
        os.environ.get("BEARER_TOKEN_FILE", ""),
        os.path.join(runtime, f"bt_u{os.getuid()}") if runtime else "",
        f"/tmp/bt_u{os.getuid()}",
    ]
    for path in candidates:
        if path and os.path.isfile(path):
            return _read(path).strip(), path
    return None


def collect(
    x509: str | os.PathLike[str] | None = None,
    token: str | bytes | None = None,
    files: Mapping[str, str | os.PathLike[str] | bytes] | None = None,
    discover: bool = True,
) -> Credentials:
    """Explicit credentials (a proxy path, a token, extra named files), else discovered ones."""
    creds = Credentials()
    found_x509 = (_read(x509), str(x509)) if x509 else (discover_x509() if discover else None)
    if found_x509:
        creds.files[X509] = check_x509(found_x509[0])
        creds.variables["X509_USER_PROXY"] = X509
        creds.sources[X509] = found_x509[1]
    if token is not None:
        data = token.encode() if isinstance(token, str) else bytes(token)
        found_token = (data.strip(), "token=")
    else:
        found_token = discover_token() if discover else None
    if found_token:
        creds.files[TOKEN] = check_token(found_token[0])
        creds.variables["BEARER_TOKEN_FILE"] = TOKEN
        creds.sources[TOKEN] = found_token[1]
    for name, value in (files or {}).items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"file name {name!r}: use letters, digits, '-' and '_' only")
        data = value if isinstance(value, bytes) else _read(value)
        if len(data) > MAX_BYTES:
            raise ValueError(f"{name}: larger than {MAX_BYTES} bytes")
        creds.files[name] = data
        creds.sources[name] = "bytes" if isinstance(value, bytes) else str(value)
    if len(creds.files) > MAX_FILES:
        raise ValueError(f"at most {MAX_FILES} credential files may be forwarded")
    return creds


def check_x509(data: bytes) -> bytes:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("the X509 proxy is not PEM (no certificate in it)")
    return data


def check_token(data: bytes) -> bytes:
    if not data or any(c < 0x21 or c > 0x7E for c in data):
        raise ValueError("the bearer token must be one line of printable ASCII")
    return data


def expiry_of(name: str, data: bytes) -> dt.datetime | None:
    """notAfter of an X509 proxy, ``exp`` of a JWT; None when neither can be read."""
    try:
        if name == X509:
            from cryptography import x509

            return x509.load_pem_x509_certificate(data).not_valid_after_utc
        if name == TOKEN:
            payload = data.split(b".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            return dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    except Exception:
        return None
    return None


class ForwardedCredentials(WorkerPlugin):
    """Writes the credentials into the worker's private directory and points the
    standard variables at them (tasks' XRootD, fsspec and uproot find them there)."""

    name = PLUGIN_NAME

    def __init__(self, files: Mapping[str, bytes], variables: Mapping[str, str]) -> None:
        self.files = dict(files)
        self.variables = dict(variables)
        self.directory = ""

    def setup(self, worker) -> None:
        directory = Path(worker.local_directory) / "credentials"
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        for name, data in self.files.items():
            final = directory / name
            fresh = directory / f".{name}.new"
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(fresh, final)  # readers see the old file or the new, never half
        for variable, name in self.variables.items():
            os.environ[variable] = str(directory / name)
        self.directory = str(directory)
        if "BEARER_TOKEN_FILE" in self.variables:
            _bearer_token_for_fsspec(self.files[self.variables["BEARER_TOKEN_FILE"]])

    def teardown(self, worker) -> None:
        # Replaced by a newer registration (which rewrote the files) or the worker ends.
        if worker.status.name in ("closing", "closed", "closing_gracefully"):
            for name in self.files:
                Path(self.directory, name).unlink(missing_ok=True)


def _bearer_token_for_fsspec(token: bytes) -> None:
    """fsspec's HTTP file system (uproot's default for https://) sends no token by itself:
    set it as the default header of its https and http instances."""
    try:
        import fsspec.config
    except ImportError:
        return
    header = {"Authorization": f"Bearer {token.decode()}"}
    for protocol in ("https", "http"):
        conf = fsspec.config.conf.setdefault(protocol, {})
        conf["headers"] = {**conf.get("headers", {}), **header}


def forward(cluster, x509=None, token=None, files=None, discover=True) -> dict[str, dict]:
    """Register the credentials plugin on ``cluster``'s scheduler; a summary per file."""
    import sys
    import warnings

    import cloudpickle

    creds = collect(x509, token, files, discover)
    if not creds.files:
        return {}
    # Workers may run an image without this package: the plugin travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    plugin = ForwardedCredentials(creds.files, creds.variables)
    client = cluster.get_client(set_as_default=False)
    try:
        client.register_plugin(plugin, name=PLUGIN_NAME)
    finally:
        client.close()
    summary = creds.summary()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for name, info in summary.items():
        if info["expires"] and dt.datetime.fromisoformat(info["expires"]) < soon:
            warnings.warn(
                f"the forwarded {name} from {info['source']} expires at {info['expires']}: "
                "renew it and call cluster.forward_credentials() again",
                stacklevel=3,
            )
    return summary


class Refresher:
    """Re-read the credentials every ``interval`` s; forward them again when they changed."""

    def __init__(self, cluster, interval, x509, token, files, discover) -> None:
        import threading
        import weakref

        self._stop = threading.Event()
        self._args = (x509, token, files, discover)
        self._last = collect(*self._args).files
        ref = weakref.ref(cluster)

        def loop() -> None:
            while not self._stop.wait(interval):
                target = ref()
                if target is None or target.status != "running":
                    return
                try:
                    current = collect(*self._args).files
                    if current != self._last:
                        target._credentials = forward(target, *self._args)
                        self._last = current
                except Exception:  # a half-written file: try again next time
                    continue
                finally:
                    del target

        self._thread = threading.Thread(target=loop, name="credentials-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
