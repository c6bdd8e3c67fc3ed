"""Bring a test bed up, down, report its status, run commands in its nodes.

Every podman object is named ``<name>-...`` and labelled ``multinode-vllm.testbed=<name>``;
``down`` removes exactly the objects carrying the label (and the name prefix), nothing else.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from multinode_vllm.testbed import image as image_mod
from multinode_vllm.testbed import inventory as inv
from multinode_vllm.testbed import standins
from multinode_vllm.testbed.nodeenv import seed_cache_dir
from multinode_vllm.testbed.podman import TestbedError, UsageError, ensure_tools, podman, podman_json, run
from multinode_vllm.testbed.spec import (
    FAKE_GPU_DIR,
    NetworkPlan,
    NodePlan,
    TestbedSpec,
    clash_message,
    existing_subnets,
    find_clashes,
    plan_networks,
    plan_nodes,
)
from multinode_vllm.testbed.state import (
    LABEL,
    NODE_LABEL,
    Steps,
    load_state,
    save_state,
    state_dir,
    venvs_dir,
)

SSH_WAIT_S = 90.0
#: Seconds one SSH probe may take: short while the nodes boot, longer once the wait drags on (a
#: login on a loaded machine can take longer than a boot).
SSH_PROBE_S = (5.0, 15.0)
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SSH_OPTS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=2",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
)


@dataclass(frozen=True)
class Node:
    index: int
    container: str
    hostname: str
    ips: dict[str, str]

    @property
    def mgmt_ip(self) -> str:
        return self.ips["eth0"]


@dataclass(frozen=True)
class Testbed:
    """A test bed that is up: its nodes, addresses, inventory and SSH key."""

    __test__ = False  # not a pytest test class

    name: str
    spec: TestbedSpec
    nodes: tuple[Node, ...]
    networks: tuple[NetworkPlan, ...]
    inventory: Path  # private inventory dir (hosts.yml + group_vars), usable with `ansible -i`
    local_inventory: Path | None  # inventories/local/hosts.yml when this test bed owns it
    ssh_key: Path
    shared_dir: Path
    already_up: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def node(self, index: int) -> Node:
        return self.nodes[index - 1]

    def ssh_argv(self, index: int, *argv: str) -> list[str]:
        return ["ssh", "-i", str(self.ssh_key), *SSH_OPTS, f"root@{self.node(index).mgmt_ip}", *argv]

    def exec(self, index: int, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return exec(self.name, index, argv, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "spec": self.spec.params(),
            "nodes": [asdict(n) for n in self.nodes],
            "networks": [asdict(n) for n in self.networks],
            "inventory": str(self.inventory),
            "local_inventory": str(self.local_inventory) if self.local_inventory else None,
            "ssh_key": str(self.ssh_key),
            "shared_dir": str(self.shared_dir),
            "already_up": self.already_up,
            "timings": self.timings,
        }
        return d


# --- podman queries (always filtered by our label) ------------------------------------------


def _label(name: str) -> str:
    return f"label={LABEL}={name}"


def containers(name: str) -> list[dict[str, Any]]:
    """Our node containers (``podman ps -a`` JSON), label and name prefix both required."""
    found = podman_json("ps", "-a", "--filter", _label(name), "--format", "json")
    return [c for c in found if any(n.startswith(f"{name}-") for n in c.get("Names") or [])]


def networks(name: str) -> list[str]:
    out = podman("network", "ls", "--filter", _label(name), "--format", "{{.Name}}")
    return [n for n in out.split() if n.startswith(f"{name}-")]


def _container_name(c: dict[str, Any]) -> str:
    return str((c.get("Names") or [""])[0])


# --- up ---------------------------------------------------------------------------------------


class BootError(TestbedError):
    """Node containers run but do not answer SSH; the message holds what each node showed."""


def up(spec: TestbedSpec, *, quiet: bool = False) -> Testbed:
    """Start the test bed described by ``spec`` (idempotent; see module doc).

    Nodes that run but do not answer SSH (on a resume or a first start) are reported with what they
    showed, removed and created once more: a test bed holds nothing that a converge cannot put
    back, and its shared dir (the model cache) stays. A second failure is raised.
    """
    spec.validate()
    steps = Steps(spec.name, quiet=quiet)
    ensure_tools(spec.install_deps)
    nets = plan_networks(spec)
    nodes = plan_nodes(spec, nets)
    try:
        return _up(spec, nets, nodes, steps)
    except BootError as exc:
        steps.say(f"{exc}\nremoving the test bed's containers and networks and creating them once more")
        _remove_objects(spec.name)
        return _create(spec, nets, nodes, steps)


def _up(spec: TestbedSpec, nets: list[NetworkPlan], nodes: list[NodePlan], steps: Steps) -> Testbed:
    existing = containers(spec.name)
    state = load_state(spec.name)
    if existing:
        if state is None or state.get("params") != spec.params():
            have = (state or {}).get("params") or {}
            want = spec.params()
            diff = ", ".join(
                f"{k}: running {have.get(k)!r}, asked {want.get(k)!r}"
                for k in sorted(set(have) | set(want))
                if have.get(k) != want.get(k)
            )
            raise UsageError(
                f"test bed {spec.name!r} is already up with other parameters ({diff or 'no state record'}). "
                f"Run 'multinode-vllm testbed down --name {spec.name}' first, or use another --name."
            )
        return _resume(spec, state=state, existing=existing, nets=nets, nodes=nodes, steps=steps)
    if networks(spec.name) or state is not None:
        steps.say("removing leftovers of an earlier attempt")
        _remove_objects(spec.name)
    return _create(spec, nets, nodes, steps)


def _create(spec: TestbedSpec, nets: list[NetworkPlan], nodes: list[NodePlan], steps: Steps) -> Testbed:
    _check_clashes(spec, nets)
    steps.say(f"{spec.nodes} nodes, layout {spec.layout}, subnet 10.{spec.resolved_index()}.0.0/16")
    steps.mark("checks")

    built = image_mod.ensure_image(steps, image=spec.image)
    steps.say("node image " + ("cached" if built["cached"] else f"built in {built['seconds']}s"))
    steps.mark("image")

    sdir = state_dir(spec.name)
    sdir.mkdir(parents=True, exist_ok=True)
    key = _ssh_key(sdir, spec.name)
    shared = spec.resolved_shared_dir()
    shared.mkdir(parents=True, exist_ok=True)
    venvs_dir().mkdir(parents=True, exist_ok=True)
    state = _state_record(spec, nets, nodes, key, built)
    save_state(spec.name, state)  # before creating anything: down finds what to remove

    for net in nets:
        args = ["network", "create", "--label", f"{LABEL}={spec.name}", "--subnet", net.subnet]
        args += ["--gateway", net.gateway]
        if net.internal:
            args.append("--internal")
        podman(*args, net.name)
    steps.mark("networks")

    artefacts = standins.prepare_host(sdir, spec.gpus_per_node)
    steps.mark("stand-ins built")

    for node in nodes:  # node1 (the head) first
        podman(*_run_args(spec, node, nets, shared), spec.image, "/sbin/init")
    steps.say(f"started {len(nodes)} node containers")
    steps.mark("containers")

    pub = key.with_suffix(".pub").read_text()
    for node in nodes:
        _install_key(node.container, pub)
        standins.install(node.container, artefacts)
        if spec.layout == "slurm":  # gres.conf's File= lines: one distinct file per fake GPU
            files = " ".join(f"{FAKE_GPU_DIR}/nvidia{g}" for g in range(spec.gpus_per_node))
            podman("exec", node.container, "sh", "-c", f"mkdir -p {FAKE_GPU_DIR} && touch {files}")
    steps.mark("keys and stand-ins")

    _wait_ssh(spec.name, nodes, key, steps)
    steps.mark("ssh")

    tb = _finish(spec, state=state, nets=nets, nodes=nodes, key=key, steps=steps, already_up=False)
    steps.say(f"up: {len(nodes)} nodes answer SSH; inventory {tb.local_inventory or tb.inventory}")
    return tb


def _resume(
    spec: TestbedSpec,
    *,
    state: dict[str, Any],
    existing: list[dict[str, Any]],
    nets: list[NetworkPlan],
    nodes: list[NodePlan],
    steps: Steps,
) -> Testbed:
    names = {_container_name(c): c for c in existing}
    missing = [n.container for n in nodes if n.container not in names]
    if missing:
        raise TestbedError(
            f"test bed {spec.name!r} is incomplete (missing {', '.join(missing)}): "
            f"run 'multinode-vllm testbed down --name {spec.name}' and up again"
        )
    stopped = [n.container for n in nodes if names[n.container].get("State") != "running"]
    if stopped:
        steps.say(f"starting stopped nodes: {', '.join(stopped)}")
        podman("start", *stopped)
    key = Path(state["ssh_key"])
    _wait_ssh(spec.name, nodes, key, steps)
    tb = _finish(spec, state=state, nets=nets, nodes=nodes, key=key, steps=steps, already_up=not stopped)
    steps.say("already up" if not stopped else "up again")
    return tb


def _finish(
    spec: TestbedSpec,
    *,
    state: dict[str, Any],
    nets: list[NetworkPlan],
    nodes: list[NodePlan],
    key: Path,
    steps: Steps,
    already_up: bool,
) -> Testbed:
    sdir = state_dir(spec.name)
    private = inv.write_private(state, sdir / "inventory")
    local: Path | None = None
    if _may_write_local(spec):
        local = inv.write_local(state)
    state["local_inventory"] = str(local) if local else None
    state["timings"] = {**state.get("timings", {}), **({} if already_up else steps.timings)}
    state["up_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save_state(spec.name, state)
    return Testbed(
        name=spec.name,
        spec=spec,
        nodes=tuple(Node(n.index, n.container, n.hostname, dict(n.ips)) for n in nodes),
        networks=tuple(nets),
        inventory=private,
        local_inventory=local,
        ssh_key=key,
        shared_dir=spec.resolved_shared_dir(),
        already_up=already_up,
        timings=dict(steps.timings),
    )


def _may_write_local(spec: TestbedSpec) -> bool:
    if spec.local_inventory is not None:
        return spec.local_inventory
    owner = inv.owner(inv.LOCAL_HOSTS)
    if not inv.LOCAL_HOSTS.exists() or owner == spec.name:
        return True
    # left by a test bed that is gone: free to take; a live one keeps it
    return owner is not None and load_state(owner) is None and not containers(owner)


def _state_record(
    spec: TestbedSpec, nets: list[NetworkPlan], nodes: list[NodePlan], key: Path, built: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "params": spec.params(),
        "layout": spec.layout,
        "image": spec.image,
        "image_recipe": built["recipe"],
        "ssh_key": str(key),
        "shared_dir": str(spec.resolved_shared_dir()),
        "networks": [asdict(n) for n in nets],
        "nodes": [asdict(n) for n in nodes],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _check_clashes(spec: TestbedSpec, nets: list[NetworkPlan]) -> None:
    nets_json = podman_json("network", "ls", "--format", "json")
    routes = json.loads(run(["ip", "-j", "route"]).stdout or "[]")
    taken = existing_subnets(nets_json, routes, own_networks=[n.name for n in nets])
    clashes = find_clashes(nets, taken)
    if clashes:
        raise UsageError(clash_message(spec, clashes, taken))


def _ssh_key(sdir: Path, name: str) -> Path:
    key = sdir / "id_ed25519"
    if not key.exists():
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"multinode-vllm-testbed-{name}",
                "-f",
                str(key),
            ]
        )
    return key


def _run_args(spec: TestbedSpec, node: NodePlan, nets: list[NetworkPlan], shared: Path) -> list[str]:
    venvs = venvs_dir()
    args = [
        "run",
        "-d",
        "-t",  # systemd's boot messages go to `podman logs` (debugging a node that does not boot)
        "--name",
        node.container,
        "--hostname",
        node.hostname,
        "--label",
        f"{LABEL}={spec.name}",
        "--label",
        f"{NODE_LABEL}={node.index}",
        "--restart=always",  # `systemctl reboot` in a node brings it back (reboot handler)
        "--cap-add",
        "NET_ADMIN",  # the cluster_firewall role loads its nftables table in the node's netns
        "--shm-size",
        spec.shm_size,
        "-v",
        f"{shared}:{shared}",
        "-v",
        f"{venvs}:{venvs}:ro",
    ]
    if spec.memory:
        args += ["--memory", spec.memory]
    for net in nets:
        args += ["--network", f"{net.name}:ip={node.ips[net.interface]},interface_name={net.interface}"]
        args += ["--network-alias", node.hostname] if not net.internal else []
    return args


def _install_key(container: str, pubkey: str) -> None:
    """The controller's key for root; and, where the node venv has it, the seed of vLLM's cache in
    root's ``~/.cache/vllm`` (``nodeenv.seed_cache_dir``: vLLM's first start on the node then skips
    re-importing itself to inspect the model class). One exec for both."""
    seed = shlex.quote(str(seed_cache_dir()))
    podman(
        "exec",
        "-i",
        container,
        "sh",
        "-c",
        "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys && "
        f"if [ -d {seed} ]; then mkdir -p /root/.cache/vllm && cp -R {seed}/. /root/.cache/vllm/; fi",
        input=pubkey,
    )


def ssh_ok(ip: str, key: Path, timeout: float = 5) -> bool:
    argv = ["ssh", "-i", str(key), *SSH_OPTS, f"root@{ip}", "true"]
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait_ssh(name: str, nodes: Sequence[NodePlan], key: Path, steps: Steps, limit: float = SSH_WAIT_S) -> None:
    started = time.monotonic()
    deadline = started + limit
    pending = list(nodes)
    while pending:
        probe = SSH_PROBE_S[0] if time.monotonic() - started < limit / 3 else SSH_PROBE_S[1]
        pending = [n for n in pending if not ssh_ok(n.mgmt_ip, key, timeout=probe)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BootError(_boot_failure(name, pending, limit, key))
        for n in pending:
            st = podman("inspect", "--format", "{{.State.Status}}", n.container, check=False).strip()
            if st not in ("running", "created", "configured", ""):
                raise TestbedError(_boot_failure(name, [n], limit, key, state=st))
        time.sleep(0.3)


def _ssh_error(ip: str, key: Path) -> str:
    argv = ["ssh", "-i", str(key), *SSH_OPTS, f"root@{ip}", "true"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return "timed out"
    return "ok" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]


#: What a node that does not answer SSH shows from inside (podman exec, no network needed).
NODE_VIEW = (
    "echo system: $(systemctl is-system-running 2>&1); "
    "echo ssh: $(systemctl is-active ssh.service ssh-hostkeys.service 2>&1); "
    "echo listening: $(ss -Hltn 2>/dev/null | awk '{print $4}' | tr '\\n' ' '); "
    "echo addresses: $(ip -br -4 addr 2>&1 | tr -s ' ' | tr '\\n' ';'); "
    "journalctl -b -u ssh.service -n 5 --no-pager -o cat 2>&1 | sed 's/^/journal: /'"
)


def _node_view(node: NodePlan) -> list[str]:
    lines = []
    for label, argv in (
        ("", ["podman", "exec", node.container, "sh", "-c", NODE_VIEW]),
        ("host route: ", ["ip", "-o", "route", "get", node.mgmt_ip]),
    ):
        try:
            proc = run(argv, check=False, timeout=30)
            text = proc.stdout + proc.stderr
        except TestbedError as exc:  # a hung podman exec: say so, keep the rest of the report
            text = str(exc)
        lines += [label + line for line in text.splitlines() if line.strip()]
    return lines


def _boot_failure(name: str, nodes: Sequence[NodePlan], limit: float, key: Path, state: str | None = None) -> str:
    lines = []
    for n in nodes:
        st = state or podman("inspect", "--format", "{{.State.Status}}", n.container, check=False).strip()
        logs = run(["podman", "logs", "--tail", "40", n.container], check=False)
        text = ANSI_RE.sub("", (logs.stdout + logs.stderr).replace("\r", ""))
        tail = [line for line in text.splitlines() if line.strip()][-8:]
        lines.append(f"{n.container} ({n.mgmt_ip}): container state {st!r}; ssh: {_ssh_error(n.mgmt_ip, key)}")
        lines += [f"  {line}" for line in _node_view(n)]
        lines.append("  podman logs (last lines):")
        lines += [f"    {line}" for line in tail] or ["    (empty)"]
    what = "did not answer SSH" if state is None else "stopped while booting"
    return (
        f"test bed {name!r}: node(s) {what} within {limit:.0f}s:\n"
        + "\n".join(lines)
        + f"\nInspect with 'podman logs {nodes[0].container}'; "
        + f"remove with 'multinode-vllm testbed down --name {name}'."
    )


# --- down -------------------------------------------------------------------------------------


def _remove_objects(name: str) -> dict[str, list[str]]:
    removed: dict[str, list[str]] = {"containers": [], "networks": []}
    cs = [_container_name(c) for c in containers(name)]
    if cs:
        podman("rm", "-f", "-t", "5", *cs, timeout=120)
        removed["containers"] = cs
    ns = networks(name)
    if ns:
        podman("network", "rm", *ns)
        removed["networks"] = ns
    return removed


def down(name: str, purge: bool = False, *, quiet: bool = False) -> dict[str, Any]:
    """Remove the test bed's containers, networks, state dir and (if it owns it) hosts.yml.

    The shared dir (model cache) only with ``purge``. Returns what was removed.
    """
    TestbedSpec(name=name).validate()  # the name alone: refuses patterns that could match others
    steps = Steps(name, quiet=quiet)
    state = load_state(name)
    removed: dict[str, Any] = _remove_objects(name)
    steps.say(f"removed {len(removed['containers'])} containers, {len(removed['networks'])} networks")
    removed["local_inventory"] = None
    if inv.owner(inv.LOCAL_HOSTS) == name:
        inv.LOCAL_HOSTS.unlink()
        removed["local_inventory"] = str(inv.LOCAL_HOSTS)
    sdir = state_dir(name)
    removed["state_dir"] = str(sdir) if sdir.exists() else None
    if sdir.exists():
        shutil.rmtree(sdir)
    removed["shared_dir"] = None
    if purge:
        shared = Path(state["shared_dir"]) if state else TestbedSpec(name=name).resolved_shared_dir()
        if shared.exists():
            shutil.rmtree(shared)
            removed["shared_dir"] = str(shared)
    steps.say("down" + (" (shared dir purged)" if removed["shared_dir"] else ""))
    return removed


# --- status and exec --------------------------------------------------------------------------


def status(name: str) -> dict[str, Any]:
    """Nodes of the test bed: container state, IPs, SSH answering; ``exists`` False when none."""
    state = load_state(name)
    live = {_container_name(c): c for c in containers(name)}
    planned = (state or {}).get("nodes") or []
    key = Path(state["ssh_key"]) if state else None
    rows = []
    names = [n["container"] for n in planned] + sorted(set(live) - {n["container"] for n in planned})
    by_name = {n["container"]: n for n in planned}

    def row(cname: str) -> dict[str, Any]:
        c = live.get(cname)
        ips = by_name.get(cname, {}).get("ips", {})
        st = str(c.get("State")) if c else "absent"
        ok = bool(st == "running" and key and ips.get("eth0") and ssh_ok(ips["eth0"], key, timeout=4))
        return {
            "container": cname,
            "hostname": by_name.get(cname, {}).get("hostname"),
            "state": st,
            "ips": ips,
            "ssh": ok,
        }

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(row, names))
    return {
        "name": name,
        "exists": bool(state or live),
        "layout": (state or {}).get("layout"),
        "inventory": str(state_dir(name) / "inventory") if state else None,
        "local_inventory": (state or {}).get("local_inventory"),
        "networks": networks(name),
        "nodes": rows,
        "healthy": bool(rows) and all(r["ssh"] for r in rows),
    }


def exec(
    name: str,
    node_index: int,
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in node ``node_index`` (1-based) of test bed ``name`` with ``podman exec``."""
    container = f"{name}-node{node_index}"
    flags = ["-i"] if input is not None else []
    return run(["podman", "exec", *flags, container, *argv], check=check, input=input, timeout=timeout)


def load(name: str) -> Testbed:
    """The Testbed object of a test bed that is up (from its state), without touching it."""
    state = load_state(name)
    if state is None:
        raise TestbedError(f"no test bed {name!r} (no state in {state_dir(name)})")
    params = dict(state["params"])
    params["shared_dir"] = Path(params["shared_dir"])
    spec = TestbedSpec(**params)
    local = state.get("local_inventory")
    return Testbed(
        name=name,
        spec=spec,
        nodes=tuple(Node(n["index"], n["container"], n["hostname"], dict(n["ips"])) for n in state["nodes"]),
        networks=tuple(NetworkPlan(**n) for n in state["networks"]),
        inventory=state_dir(name) / "inventory",
        local_inventory=Path(local) if local else None,
        ssh_key=Path(state["ssh_key"]),
        shared_dir=Path(state["shared_dir"]),
        already_up=True,
        timings=dict(state.get("timings", {})),
    )
