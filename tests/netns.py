"""A small site network made of network namespaces, for the networking tests.

The gateway host is this (root) namespace; execute nodes are namespaces joined to
it by one Linux bridge (one subnet, so no forwarding in the host's namespace is
needed), each with its own firewall; a NAT router is a namespace with a public
address on the bridge and a private subnet behind it. Everything made is removed
by ``Site.close()``, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid


def can_make_namespaces() -> str | None:
    """Why this machine cannot run the tests (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, iptables)"
    probe = f"egprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


class Site:
    """Namespaces, links and firewall rules of one test, with unique names and subnets."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        octet = 100 + int(self.tag, 16) % 150
        self.subnet = f"10.{octet}.0"  # the bridge: gateway host .1, nodes .2, .3, ...
        self.private = f"192.168.{octet}"  # behind the NAT router
        self.bridge = f"egbr{self.tag}"
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self._next_host = 2
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.links.append(self.bridge)
        sh("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    @property
    def gateway_ip(self) -> str:
        return f"{self.subnet}.1"

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def in_ns(self, ns: str, *argv: str) -> None:
        sh(*self.exec_prefix(ns), *argv)

    def _namespace(self, role: str) -> str:
        ns = f"eg{role}{self.tag}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _on_bridge(self, ns: str, role: str) -> tuple[str, str]:
        """A veth from ``ns`` to the bridge; its address on the bridge and its name there."""
        ip = f"{self.subnet}.{self._next_host}"
        self._next_host += 1
        host_end, ns_end = f"eh{role}{self.tag}", f"en{role}{self.tag}"
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        self.links.append(host_end)
        sh("ip", "link", "set", host_end, "master", self.bridge, "up")
        sh("ip", "link", "set", ns_end, "netns", ns)
        self.in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", ns_end)
        self.in_ns(ns, "ip", "link", "set", ns_end, "up")
        return ip, ns_end

    def _route_via_gateway_host(self, ns: str) -> None:
        """A default route, as every node has (distributed picks its address by it)."""
        self.in_ns(ns, "ip", "route", "add", "default", "via", self.gateway_ip)

    def execute_node(self, role: str, open_ports: str | None) -> tuple[str, str]:
        """A node on the bridge whose firewall accepts new TCP only on ``open_ports``
        (``"40000:40100"``; None: nothing inbound). Returns (namespace, address)."""
        ns = self._namespace(role)
        ip, _ = self._on_bridge(ns, role)
        self._route_via_gateway_host(ns)
        self.firewall(ns, open_ports)
        return ns, ip

    def pod_network(self, role: str) -> tuple[str, str]:
        """A namespace on the bridge for pods (a pod network routed to the site, no
        firewall of its own). Returns (namespace, address)."""
        ns = self._namespace(role)
        ip, _ = self._on_bridge(ns, role)
        self._route_via_gateway_host(ns)
        return ns, ip

    def firewall(self, ns: str, open_ports: str | None) -> None:
        """Inbound: loopback, replies, and new TCP on ``open_ports`` only."""
        rules = [
            ["-P", "INPUT", "DROP"],
            ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
            ["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ]
        if open_ports:
            rules.append(["-A", "INPUT", "-p", "tcp", "--dport", open_ports, "-j", "ACCEPT"])
        for rule in rules:
            self.in_ns(ns, "iptables", *rule)

    def node_behind_nat(self, role: str, forwarded_ports: str) -> tuple[str, str]:
        """A node on a private subnet behind a NAT router that forwards ``forwarded_ports``
        of its public address unchanged. Returns (node namespace, router's public address)."""
        router = self._namespace(f"r{role}")
        public, outside = self._on_bridge(router, f"r{role}")
        node = self._namespace(role)
        inside, node_end = f"ri{role}{self.tag}", f"ni{role}{self.tag}"
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", node_end)
        sh("ip", "link", "set", inside, "netns", router)
        sh("ip", "link", "set", node_end, "netns", node)
        self.in_ns(router, "ip", "addr", "add", f"{self.private}.1/24", "dev", inside)
        self.in_ns(router, "ip", "link", "set", inside, "up")
        self.in_ns(node, "ip", "addr", "add", f"{self.private}.2/24", "dev", node_end)
        self.in_ns(node, "ip", "link", "set", node_end, "up")
        self.in_ns(node, "ip", "route", "add", "default", "via", f"{self.private}.1")
        self.in_ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nat = ["iptables", "-t", "nat", "-A"]
        self.in_ns(
            router,
            *nat,
            "POSTROUTING",
            "-s",
            f"{self.private}.0/24",
            "-o",
            outside,
            "-j",
            "MASQUERADE",
        )
        self.in_ns(
            router,
            *nat,
            "PREROUTING",
            "-d",
            public,
            "-p",
            "tcp",
            "--dport",
            forwarded_ports,
            "-j",
            "DNAT",
            "--to-destination",
            f"{self.private}.2",
        )
        return node, public

    def close(self) -> list[str]:
        """Remove every namespace and link made; the problems met, if any."""
        problems = []
        for ns in reversed(self.namespaces):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            if pids.stdout.strip():
                problems.append(f"processes left in {ns}: {pids.stdout.split()}")
                for pid in pids.stdout.split():
                    subprocess.run(["kill", "-9", pid], check=False)
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        return problems
