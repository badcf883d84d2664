"""Network namespaces for the local cluster's extra compute nodes (demo and CI only).

A node marked ``netns: true`` in the site file runs its own ``slurmd`` in a network namespace
``aif-<node>`` joined to the machine by a veth pair with a private /30: the machine is
``10.77.N.1``, the node ``10.77.N.2``. Sessions on that node listen on the node's address, the
proxy reaches them there and they call the hub back at the machine's side: the path a real
cluster's compute nodes take, on one machine. Nothing is routed beyond the /30.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.77.{index}.{host}"
FIRST_INDEX = 7
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# aifactory local cluster"


@dataclass(frozen=True)
class NamespaceNode:
    node: str  # Slurm node name (and the namespace's host name)
    index: int

    @property
    def namespace(self) -> str:
        return f"aif-{self.node}"[:15]

    @property
    def host_side(self) -> str:
        return f"aifh{self.index}"  # veth on the machine

    @property
    def node_side(self) -> str:
        return f"aifn{self.index}"  # veth in the namespace

    @property
    def machine_address(self) -> str:
        return SUBNET.format(index=self.index, host=1)

    @property
    def address(self) -> str:
        return SUBNET.format(index=self.index, host=2)


def _ip(*args: str, namespace: str = "") -> subprocess.CompletedProcess:
    argv = ["ip", *(["netns", "exec", namespace, "ip"] if namespace else []), *args]
    return subprocess.run(argv, capture_output=True, text=True)


def exists(node: NamespaceNode) -> bool:
    return node.namespace in _ip("netns", "list").stdout.split()


def supported() -> tuple[bool, str]:
    """Can this machine make network namespaces? (False, why) in containers that forbid it."""
    probe = "aif-probe"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return False, (made.stderr.strip() or "ip netns add failed")
    _ip("netns", "del", probe)
    return True, ""


def create(node: NamespaceNode) -> None:
    """The namespace, the veth pair and the /30 (idempotent)."""
    if not exists(node):
        _check(_ip("netns", "add", node.namespace))
    if _ip("link", "show", node.host_side).returncode != 0:
        _check(_ip("link", "add", node.host_side, "type", "veth", "peer", "name", node.node_side))
        _check(_ip("link", "set", node.node_side, "netns", node.namespace))
    if node.machine_address not in _ip("-o", "addr", "show", "dev", node.host_side).stdout:
        _check(_ip("addr", "add", f"{node.machine_address}/30", "dev", node.host_side))
    _check(_ip("link", "set", node.host_side, "up"))
    inside = _ip("-o", "addr", "show", "dev", node.node_side, namespace=node.namespace).stdout
    if node.address not in inside:
        _check(_ip("addr", "add", f"{node.address}/30", "dev", node.node_side, namespace=node.namespace))
    _check(_ip("link", "set", node.node_side, "up", namespace=node.namespace))
    _check(_ip("link", "set", "lo", "up", namespace=node.namespace))
    add_host_name(node)


def delete(node: NamespaceNode) -> None:
    _ip("link", "del", node.host_side)
    _ip("netns", "del", node.namespace)
    remove_host_name(node)


def add_host_name(node: NamespaceNode) -> None:
    """The hub and the proxy reach sessions by the node name Slurm reports (``squeue %B``)."""
    lines = HOSTS_FILE.read_text().splitlines() if HOSTS_FILE.exists() else []
    entry = f"{node.address} {node.node} {HOSTS_MARK}"
    if entry not in lines:
        lines = [line for line in lines if not (line.endswith(HOSTS_MARK) and f" {node.node} " in line)]
        HOSTS_FILE.write_text("\n".join([*lines, entry]) + "\n")


def remove_host_name(node: NamespaceNode) -> None:
    if HOSTS_FILE.exists():
        lines = HOSTS_FILE.read_text().splitlines()
        kept = [line for line in lines if not (line.endswith(HOSTS_MARK) and f" {node.node} " in line)]
        if kept != lines:
            HOSTS_FILE.write_text("\n".join(kept) + "\n")


def namespace_of(pid: int) -> str:
    """The named network namespace a process runs in ('' for the machine's own)."""
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()


def _check(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0 and "File exists" not in result.stderr:
        raise RuntimeError(f"{' '.join(result.args)}: {result.stderr.strip()}")
