"""The process kubelet confirms a deletion only once the pod is gone (tests/fakes/kubernetes).

benchmarks/chaos.py found it trusting one 404: a kube-apiserver just restarted answered the
node's DELETE 404 while the pod was still there, and the pod stayed Terminating for good.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.fakes.kubernetes.kubelet import Kubelet, NodePod

POD_PATH = "/api/v1/namespaces/ns/pods/p"


class FakeNode:
    """Answers DELETE and GET from scripted statuses, recording what was asked."""

    def __init__(self, deletes: list[int], gets: list[int]) -> None:
        self.deletes, self.gets = deletes, gets
        self.asked: list[str] = []

    async def request(self, method, path, body=None, ok=(), seconds=15, **kw):
        assert path == POD_PATH
        self.asked.append(method)
        status = (self.deletes if method == "DELETE" else self.gets).pop(0)
        return status, {"metadata": {"uid": "u-1"}} if status == 200 else {}


def node_pod() -> NodePod:
    async def stop(grace):
        return None

    runner = SimpleNamespace(
        ns="ns", name="p", uid="u-1", key="ns/p", stop=stop, cleanup_files=lambda: None
    )
    return NodePod(runner, SimpleNamespace(close=lambda: None))


def kubelet(node: FakeNode) -> Kubelet:
    return Kubelet(node, None, "n1", {}, {}, Path("/nonexistent"))


async def test_a_404_while_the_pod_is_still_there_is_retried_until_it_is_deleted():
    node = FakeNode(deletes=[404, 200], gets=[200])
    await kubelet(node)._terminate_and_confirm(node_pod(), grace=0)
    assert node.asked == ["DELETE", "GET", "DELETE"]


async def test_a_404_for_a_pod_that_is_gone_confirms_at_once():
    node = FakeNode(deletes=[404], gets=[404])
    await kubelet(node)._terminate_and_confirm(node_pod(), grace=0)
    assert node.asked == ["DELETE", "GET"]
