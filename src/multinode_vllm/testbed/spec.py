"""What a test bed is: the spec, its addresses and networks, and subnet clash detection.

Pure code (no podman): unit-tested without containers.

Addressing: a test bed owns the block ``10.I.0.0/16`` where ``I`` is its subnet index (the second
octet); network ``j`` is ``10.I.j.0/24`` (gateway ``.1`` on the host bridge) and node ``n`` has
``10.I.j.(10+n)``. ``I`` defaults to a hash of the name in 200..249, so two test beds with
different names usually coexist; a clash is detected before anything is created.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from multinode_vllm.testbed.image import DYNAMO_IMAGE, IMAGE, SLURM_IMAGE
from multinode_vllm.testbed.podman import UsageError

DEFAULT_NAME = "mnv"
LAYOUTS = ("bond0", "droplet", "slurm", "dynamo")
#: Where the slurm layout's nodes get one empty file per fake GPU (gres.conf's File=, one per GPU).
FAKE_GPU_DIR = "/var/lib/multinode-vllm-fake-gpu"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
SIZE_RE = re.compile(r"^[1-9][0-9]*[kmgKMG]?$")
INDEX_RANGE = (200, 250)  # default subnet indexes: 10.200.x.x .. 10.249.x.x
MAX_NODES = 64
MAX_RAILS = 8  # eth2 .. eth9
NODE_HOST_OFFSET = 10  # node n -> .10+n
SHARED_ROOT = Path("/srv/multinode-vllm")


@dataclass(frozen=True)
class TestbedSpec:
    """Parameters of one simulated cluster (``multinode-vllm testbed up`` options)."""

    __test__ = False  # not a pytest test class

    name: str = DEFAULT_NAME
    nodes: int = 2
    layout: str = "bond0"
    rails: int = 2
    subnet_index: int | None = None
    shared_dir: Path | None = None
    gpus_per_node: int = 8
    shm_size: str = "2g"
    memory: str | None = None
    install_deps: bool = False
    #: Also write inventories/local/hosts.yml: True, False, or None = when it is free (absent, ours,
    #: or left by a test bed that is gone).
    local_inventory: bool | None = None

    def validate(self) -> None:
        """Raise UsageError naming the option and the fix; nothing is created before this passes."""
        if not NAME_RE.match(self.name):
            raise UsageError(
                f"--name {self.name!r}: use 1-32 lowercase letters, digits and '-', starting with a "
                "letter and not ending with '-' (every podman object is named <name>-...)"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise UsageError(f"--nodes {self.nodes}: use 1..{MAX_NODES}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if not 1 <= self.rails <= MAX_RAILS:
            raise UsageError(f"--rails {self.rails}: use 1..{MAX_RAILS} (data rails eth2..eth{MAX_RAILS + 1})")
        if self.subnet_index is not None and not 1 <= self.subnet_index <= 254:
            raise UsageError(f"--subnet-index {self.subnet_index}: use 1..254 (the second octet of 10.I.0.0/16)")
        if self.layout == "slurm" and self.nodes < 2:
            raise UsageError(
                f"--nodes {self.nodes}: the slurm layout needs 2 or more (node1 the controller, the rest compute)"
            )
        if not 1 <= self.gpus_per_node <= 16:
            raise UsageError(f"--gpus-per-node {self.gpus_per_node}: use 1..16")
        if not SIZE_RE.match(self.shm_size):
            raise UsageError(f"--shm-size {self.shm_size!r}: use a size like 2g or 512m")
        if self.memory is not None and not SIZE_RE.match(self.memory):
            raise UsageError(f"--memory {self.memory!r}: use a size like 4g or 512m")
        shared = self.resolved_shared_dir()
        if not shared.is_absolute() or str(shared) in ("/", "/srv", "/var", "/tmp", "/root", "/home"):
            raise UsageError(
                f"--shared-dir {shared}: use a dedicated absolute directory (it is mounted at the same "
                "path in every node and deleted by 'down --purge')"
            )

    @property
    def image(self) -> str:
        """The node image tag: the SLURM layout's carries Debian's slurm-wlm and munge, the Dynamo
        layout's etcd-server and nats-server."""
        return {"slurm": SLURM_IMAGE, "dynamo": DYNAMO_IMAGE}.get(self.layout, IMAGE)

    def resolved_index(self) -> int:
        return self.subnet_index if self.subnet_index is not None else default_subnet_index(self.name)

    def resolved_shared_dir(self) -> Path:
        return Path(self.shared_dir) if self.shared_dir is not None else SHARED_ROOT / self.name

    def params(self) -> dict[str, Any]:
        """What makes two `up` calls the same test bed (flags that only act once are left out)."""
        d = asdict(self)
        for transient in ("install_deps", "local_inventory"):
            d.pop(transient)
        d["subnet_index"] = self.resolved_index()
        d["shared_dir"] = str(self.resolved_shared_dir())
        if self.layout != "droplet":
            d.pop("rails")
        return d


def default_subnet_index(name: str) -> int:
    """A stable second octet for ``name`` in 200..249."""
    lo, hi = INDEX_RANGE
    digest = hashlib.sha256(name.encode()).digest()
    return lo + int.from_bytes(digest[:4], "big") % (hi - lo)


@dataclass(frozen=True)
class NetworkPlan:
    name: str  # podman network name: <testbed>-<role>
    role: str  # mgmt | fabric | pub | vpc | rail0 ...
    interface: str  # interface name inside every node
    subnet: str  # 10.I.j.0/24
    gateway: str  # 10.I.j.1 (the host bridge)
    internal: bool  # only the management network has the default route and NAT

    def ip(self, node: int) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + NODE_HOST_OFFSET + node)


def plan_networks(spec: TestbedSpec) -> list[NetworkPlan]:
    if spec.layout in ("bond0", "slurm", "dynamo"):
        roles = [("mgmt", "eth0", False), ("fabric", "bond0", True)]
    else:
        roles = [("pub", "eth0", False), ("vpc", "eth1", True)]
        roles += [(f"rail{k}", f"eth{k + 2}", True) for k in range(spec.rails)]
    index = spec.resolved_index()
    plans = []
    for j, (role, iface, internal) in enumerate(roles):
        plans.append(
            NetworkPlan(
                name=f"{spec.name}-{role}",
                role=role,
                interface=iface,
                subnet=f"10.{index}.{j}.0/24",
                gateway=f"10.{index}.{j}.1",
                internal=internal,
            )
        )
    return plans


@dataclass(frozen=True)
class NodePlan:
    index: int  # 1-based
    container: str  # <testbed>-node<i>
    hostname: str  # node<i>
    ips: dict[str, str] = field(default_factory=dict)  # interface -> address

    @property
    def mgmt_ip(self) -> str:
        return self.ips["eth0"]


def plan_nodes(spec: TestbedSpec, networks: Sequence[NetworkPlan]) -> list[NodePlan]:
    return [
        NodePlan(
            index=i,
            container=f"{spec.name}-node{i}",
            hostname=f"node{i}",
            ips={n.interface: n.ip(i) for n in networks},
        )
        for i in range(1, spec.nodes + 1)
    ]


# --- clash detection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Clash:
    planned_network: str
    planned_subnet: str
    other: str  # "podman network 'x'" or "host route via dev"
    other_subnet: str

    def __str__(self) -> str:
        return f"{self.planned_subnet} (planned for {self.planned_network}) overlaps {self.other} ({self.other_subnet})"


def existing_subnets(
    networks: Iterable[Mapping[str, Any]],
    routes: Iterable[Mapping[str, Any]],
    own_networks: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """(description, subnet) of every podman network and host route not belonging to us.

    ``networks`` is ``podman network ls --format json``; ``routes`` is ``ip -j route``. Routes on
    a podman network's bridge are that network's own and are reported once, as the network.
    """
    own = set(own_networks)
    found: list[tuple[str, str]] = []
    bridges: set[str] = set()
    own_bridges: set[str] = set()
    for net in networks:
        name = str(net.get("name") or net.get("Name") or "")
        bridge = str(net.get("network_interface") or "")
        if name in own:
            if bridge:
                own_bridges.add(bridge)
            continue
        if bridge:
            bridges.add(bridge)
        for sub in net.get("subnets") or net.get("Subnets") or []:
            cidr = sub.get("subnet") if isinstance(sub, Mapping) else sub
            if cidr:
                found.append((f"podman network '{name}'", str(cidr)))
    for route in routes:
        dst = str(route.get("dst") or "")
        dev = str(route.get("dev") or "")
        if not dst or dst == "default" or dev in bridges or dev in own_bridges:
            continue
        if "/" not in dst:
            dst += "/32"
        found.append((f"host route {dst} dev {dev}", dst))
    return found


def find_clashes(plans: Sequence[NetworkPlan], existing: Iterable[tuple[str, str]]) -> list[Clash]:
    clashes = []
    taken = []
    for desc, cidr in existing:
        try:
            taken.append((desc, ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            continue
    for plan in plans:
        mine = ipaddress.ip_network(plan.subnet)
        for desc, other in taken:
            if other.version == mine.version and mine.overlaps(other):
                clashes.append(Clash(plan.name, plan.subnet, desc, str(other)))
    return clashes


def free_subnet_index(spec: TestbedSpec, existing: Sequence[tuple[str, str]]) -> int | None:
    """The first subnet index (default range first) with no clash, for the error message."""
    lo, hi = INDEX_RANGE
    for idx in [*range(lo, hi), *range(hi, 255), *range(16, lo)]:
        candidate = TestbedSpec(**{**asdict(spec), "subnet_index": idx})
        if not find_clashes(plan_networks(candidate), existing):
            return idx
    return None


def clash_message(spec: TestbedSpec, clashes: Sequence[Clash], existing: Sequence[tuple[str, str]]) -> str:
    lines = [f"test bed {spec.name!r}: subnet 10.{spec.resolved_index()}.0.0/16 clashes with what is on this host:"]
    lines += [f"  - {c}" for c in clashes]
    free = free_subnet_index(spec, existing)
    if free is not None:
        lines.append(f"fix: pass --subnet-index {free} (10.{free}.0.0/16 is free), or remove what clashes")
    else:
        lines.append("fix: remove the clashing networks; no free 10.I.0.0/16 block was found")
    return "\n".join(lines)
