"""A process kubelet: runs the pods of one namespace on one Node as local processes, for tests.

It stands in for the scheduler (``scheduler.py``) and the kubelet (``kubelet.py``, which runs
pods with ``pod_runner.py`` and reports them with ``status.py``) on a control plane that has
neither. See README.md.

Run: ``python tests/fakes/kubernetes --node N --node-kubeconfig A --scheduler-kubeconfig B
--namespace NS --root DIR [--cpu 8 --memory 16Gi --max-pods 20 --gpus 0] --ready-file F``
(or ``python -m tests.fakes.kubernetes ...`` with the repository root on ``sys.path``).
SIGTERM stops every process it started (children die with it too: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

if not __package__:  # run as a path: import this folder as the package it is, not as sys.path[0]
    sys.path[0] = str(Path(__file__).resolve().parents[3])

from tests.fakes.kubernetes.kubelet import Kubelet, node_capacity, node_labels
from tests.fakes.kubernetes.log_server import LogServer
from tests.fakes.kubernetes.scheduler import Scheduler
from tests.k8s.kubeclient import Kube

log = logging.getLogger("kubelet")


async def main(args: argparse.Namespace) -> None:
    """Run the scheduler and the kubelet until SIGTERM/SIGINT, then stop everything started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kubes: list[Kube] = []
    tasks: list[asyncio.Future] = []
    kubelet: Kubelet | None = None
    log_server: LogServer | None = None
    try:
        node = await Kube.connect(args.node_kubeconfig)
        kubes.append(node)
        sched = await Kube.connect(args.scheduler_kubeconfig)
        kubes.append(sched)
        capacity = node_capacity(args.cpu, args.memory, args.max_pods, args.gpus)
        labels = node_labels(args.node)
        scheduler = Scheduler(sched, args.node, args.namespace, capacity, labels)
        kubelet = Kubelet(
            node,
            scheduler,
            args.node,
            capacity,
            labels,
            Path(args.root).resolve(),
            start_delay=args.start_delay,
            keep_files=args.keep_files,
        )
        log_server = LogServer(
            lambda: [p.runner for p in kubelet.pods.values()],
            Path(args.root).resolve(),
            node.api.configuration.ssl_ca_cert,
        )
        kubelet.kubelet_port = await log_server.start(args.node)
        await kubelet.start()
        tasks = [
            asyncio.ensure_future(kubelet.lease_loop()),
            asyncio.ensure_future(kubelet.watch_pods()),
            asyncio.ensure_future(scheduler.watch_pods()),
            asyncio.ensure_future(scheduler.loop()),
        ]
        deadline = time.monotonic() + 60
        while not (kubelet.synced and scheduler.synced):
            if time.monotonic() > deadline:
                synced = {"node": kubelet.synced, "scheduler": scheduler.synced}
                raise RuntimeError(f"watches not synced: {synced}")
            await asyncio.sleep(0.05)
        if args.ready_file:
            Path(args.ready_file).write_text(str(os.getpid()))
        log.info("process kubelet %s ready", args.node)
        await stop.wait()
    finally:
        log.info("process kubelet %s stopping", args.node)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if kubelet is not None:
            await kubelet.shutdown()
        if log_server is not None:
            await log_server.close()
        for kube in kubes:
            with contextlib.suppress(Exception):
                await kube.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``ProcessKubelet`` in tests/k8s/harness.py passes them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node", required=True)
    p.add_argument("--node-kubeconfig", required=True, help="as system:node:<node>")
    p.add_argument("--scheduler-kubeconfig", required=True, help="as system:kube-scheduler")
    p.add_argument("--namespace", required=True, help="namespace whose pods it schedules")
    p.add_argument("--root", required=True, help="scratch directory for pods")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--max-pods", type=int, default=50)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds before a pod starts")
    p.add_argument("--ready-file", default="")
    p.add_argument("--keep-files", action="store_true", help="keep Secret files after pods end")
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(main(parse_args()))
