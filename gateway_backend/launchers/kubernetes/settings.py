"""The Kubernetes launcher's settings: every ``c.KubernetesLauncher.*`` an admin can set.

The ``help=`` texts are the admin documentation (``docs/configuration.md`` is
generated from them). ``KubernetesLauncher`` inherits them from
``KubernetesSettings``, which keeps the lifecycle in ``launcher`` short enough
to read in one go.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    validate,
)
from traitlets.config import Config, Configurable

from .manifests import ManifestSettings

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class KubernetesSettings(Configurable):
    """Connection, watch and pod-template settings of ``KubernetesLauncher``."""

    # -- connection -------------------------------------------------------------------------
    kubeconfig = Unicode(
        "",
        help="""
        Path of the kubeconfig the gateway uses. Empty: ``$KUBECONFIG`` if set,
        else the in-cluster service account when the gateway runs in a pod,
        else ``~/.kube/config``.
        """,
        config=True,
    )

    kubeconfig_context = Unicode(
        "",
        help="""
        kubeconfig context to use. Empty: its current context. (Formerly
        ``KubernetesLauncher.context``, which is still read.)
        """,
        config=True,
    )

    def _load_config(self, cfg: Config, section_names: Any = None, traits: Any = None) -> None:
        """Read ``kubeconfig_context`` under its former name too.

        It was ``context`` until launchers got a ``LauncherContext`` under that
        name; dropping an old setting would connect to another cluster, silently.
        """
        sections = [s for s in section_names or self.section_names() if "context" in cfg.get(s, {})]
        if sections:
            cfg = cfg.copy()
            for section in sections:
                cfg[section] = cfg[section].copy()
                cfg[section].setdefault("kubeconfig_context", cfg[section].pop("context"))
                self.log.warning(
                    "%s.context is deprecated: use %s.kubeconfig_context", section, section
                )
        super()._load_config(cfg, section_names, traits)

    namespace = Unicode(
        "",
        help="""
        Namespace of every pod, service and secret. Empty: the gateway pod's own
        namespace in-cluster, else the kubeconfig context's namespace, else
        ``default``.
        """,
        config=True,
    )

    gateway_id = Unicode(
        "elastic-gateway",
        help="""
        Value of the ``gateway.dask.org/instance`` label on everything this
        gateway creates; its watch and clean-ups select by it. Gateways sharing
        a namespace must use different values. It must stay the same across
        restarts (a restarted gateway finds its pods by it), so the default is a
        fixed name, not the host or pod name. A valid label value (63
        characters at most).
        """,
        config=True,
    )

    @validate("gateway_id")
    def _validate_gateway_id(self, proposal):
        value = proposal.value
        if not value or len(value) > 63 or not LABEL_VALUE.match(value):
            raise TraitError(
                f"KubernetesLauncher.gateway_id={value!r} is not a valid label value: "
                "use at most 63 letters, digits, '-', '_' or '.', starting and ending "
                "with a letter or digit"
            )
        return value

    request_timeout = Float(
        15.0, min=1, help="Seconds before one Kubernetes API request counts as failed.", config=True
    )

    api_retry_timeout = Float(
        20.0,
        min=0,
        help="""
        Seconds an API call is retried (with back-off) on 5xx answers, time-outs
        and connection errors before the launcher reports the API unavailable
        (the gateway then retries later without failing anything).
        """,
        config=True,
    )

    watch_timeout = Float(
        300.0,
        min=1,
        help="""
        Seconds after which the API server ends the pod watch; it is resumed
        from its resourceVersion at once (a re-list only follows a 410 Gone).
        """,
        config=True,
    )

    watch_backoff_max = Float(
        30.0, min=0.1, help="Longest pause between attempts to re-open a failed watch.", config=True
    )

    reconcile_period = Float(
        30.0,
        min=0.5,
        help="""
        Seconds between comparisons of the pod cache with the database: pods
        without an active record (a deletion that failed while the API was
        down, a crash between create and record) are deleted. Reads the cache
        only; no API call unless something must be deleted.
        """,
        config=True,
    )

    startup_sync_timeout = Float(
        20.0,
        min=0,
        help="Seconds a starting gateway waits for its first pod list before reconciling.",
        config=True,
    )

    # -- pods ----------------------------------------------------------------------------------
    image = Unicode(
        "ghcr.io/dask/dask-gateway:2026.3.0",
        help="""
        Container image of schedulers and workers. It must provide ``dask``
        (distributed) and ``dask-gateway`` of the versions the gateway runs.
        """,
        config=True,
    )

    image_pull_policy = Enum(
        ["Always", "IfNotPresent", "Never"],
        "IfNotPresent",
        help="``imagePullPolicy`` of the containers.",
        config=True,
    )

    image_pull_secrets = List(
        Unicode(),
        [],
        help="Names of Secrets to pull the image with (``imagePullSecrets``).",
        config=True,
    )

    service_account = Unicode(
        "",
        help="""
        ``serviceAccountName`` of scheduler and worker pods. Empty: the
        namespace's ``default``. Their token is not mounted
        (``automount_service_account_token``).
        """,
        config=True,
    )

    automount_service_account_token = Bool(
        False,
        help="Mount the pods' service-account token. Dask does not need the Kubernetes API.",
        config=True,
    )

    node_selector = Dict({}, help="``nodeSelector`` of scheduler and worker pods.", config=True)

    tolerations = List(
        Dict(),
        [],
        help="``tolerations`` of scheduler and worker pods (list of Toleration dicts).",
        config=True,
    )

    volumes = List(
        Dict(),
        [],
        help="""
        Extra ``volumes`` of scheduler and worker pods, e.g. CVMFS or home areas:
        ``[{"name": "cvmfs", "hostPath": {"path": "/cvmfs"}}]``. Mount them with
        ``volume_mounts``.
        """,
        config=True,
    )

    volume_mounts = List(
        Dict(),
        [],
        help="""
        Extra ``volumeMounts`` of the scheduler and worker containers:
        ``[{"name": "cvmfs", "mountPath": "/cvmfs", "readOnly": True}]``.
        """,
        config=True,
    )

    extra_labels = Dict(
        {},
        help="Extra labels on every pod, service and secret (the launcher's own labels win).",
        config=True,
    )

    extra_annotations = Dict(
        {}, help="Extra annotations on every pod, service and secret.", config=True
    )

    environment = Dict(
        {},
        help="Extra, non-secret environment variables of scheduler and worker containers.",
        config=True,
    )

    scheduler_extra_pod_config = Dict(
        {},
        help="""
        Merged into the scheduler pod's ``spec`` (dicts merge, lists append), for
        anything without a setting of its own (``priorityClassName``,
        ``affinity``, ``securityContext``...).
        """,
        config=True,
    )

    worker_extra_pod_config = Dict(
        {}, help="Merged into worker pods' ``spec`` (dicts merge, lists append).", config=True
    )

    scheduler_extra_container_config = Dict(
        {}, help="Merged into the scheduler container (dicts merge, lists append).", config=True
    )

    worker_extra_container_config = Dict(
        {}, help="Merged into worker containers (dicts merge, lists append).", config=True
    )

    cpu_limits = Bool(
        True,
        help="""
        Set CPU limits equal to the requested cores (Guaranteed QoS when memory
        matches too). Off: only CPU requests, so pods may use idle cores.
        """,
        config=True,
    )

    gpu_resource = Unicode(
        "nvidia.com/gpu",
        help="Extended resource that a cluster's ``worker_gpus`` requests.",
        config=True,
    )

    credentials_mount_path = Unicode(
        "/etc/dask-credentials",
        help="Where the cluster's Secret (TLS files; the API token for the scheduler) is mounted.",
        config=True,
    )

    credentials_file_mode = Integer(
        0o644,
        help="""
        File mode of the mounted credentials. Kubernetes' default (0644) works for
        any container user; 0o400 is stricter but needs the container to run as
        root or with a matching ``fsGroup``.
        """,
        config=True,
    )

    termination_grace_period = Integer(
        30,
        min=0,
        help="``terminationGracePeriodSeconds`` of scheduler and worker pods.",
        config=True,
    )

    scheduler_port = Integer(
        8786,
        min=0,
        max=65535,
        help="""
        Port the scheduler listens on (TLS) and its Service exposes. 0: any free
        port (only for pods that share one network, like the tests' process
        kubelet); the Service then maps to the default ports, which lead nowhere.
        """,
        config=True,
    )

    dashboard_port = Integer(8787, min=0, max=65535, help="Scheduler dashboard port.", config=True)

    api_port = Integer(
        8788, min=0, max=65535, help="Port of the scheduler's dask-gateway API.", config=True
    )

    nanny = Bool(True, help="Run a Nanny in worker pods.", config=True)

    nanny_start_method = Enum(
        ["fork", "spawn", "forkserver"],
        "fork",
        help="""
        ``distributed.worker.multiprocessing-method`` in worker pods with a
        Nanny: ``fork`` lets the nanny fork its worker from the interpreter that
        has already imported distributed (about as long again as the nanny's own
        start saved on the first worker); ``spawn`` (distributed's default) starts
        a new interpreter for it. ``environment`` may set it too, and wins.
        """,
        config=True,
    )

    worker_dashboard = Bool(
        False,
        help="""
        Serve each worker pod's own Dask dashboard. Off by default: the gateway's proxy
        routes only the scheduler's dashboard (which shows every worker), a worker pod's
        is reachable only from inside the cluster network, and importing Bokeh for it is
        about a fifth of a worker pod's start (``benchmarks/hybrid_latency.py``).
        """,
        config=True,
    )

    worker_extra_args = List(Unicode(), [], help="Extra arguments of ``dask worker``.", config=True)

    def _manifest_settings(self) -> ManifestSettings:
        """The settings every manifest is built from, read when it is built."""
        return ManifestSettings(
            **{
                field.name: getattr(self, field.name)
                for field in dataclasses.fields(ManifestSettings)
            }
        )
