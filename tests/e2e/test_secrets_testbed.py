"""Secrets and network hardening on the simulated cluster (own test bed ``mnv-sec``, 2 nodes).

One deployment with site.yml (-v) and distinctive secret values (API key, HF token, Ray token)
passed in a mode 0600 extra-vars file, the Ray dashboard on (loopback). Then:

- secrets: every node's process arguments, unit files, env files (must be 0600 root), the whole
  journal and the journal of the Ray/vLLM units, every file under /etc /tmp (Ray's logs) /var/log
  /var/lib /run /root /srv /dev/shm, and the full ansible-playbook output are searched for the
  three values: 0 hits outside the 0600 env/token files (which must hold them: the search can see
  a secret). `docker inspect` is not exercised here: the native runtime runs on this test bed.
- firewall: from a container the test makes on the test bed's management and fabric networks
  (not a cluster member), the Ray GCS and dashboard/job API time out and the OpenAI API answers
  401 without the key, 200 with it; a cluster member reaches the GCS; the job API on the head's
  loopback answers 401 without the Ray token and 200 with it; a member without the token is
  refused by the GCS. Then `--tags firewall` with another client CIDR closes the API to the
  outsider and opens it again. The operator's own nftables table survives every run.

Serving: run under ``flock /tmp/mnv-heavy.lock``. MNV_E2E_KEEP=1 keeps the test bed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import e2e_beds
import pytest

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.spec import existing_subnets, find_clashes, plan_networks
from multinode_vllm.testbed.state import load_state

pytestmark = pytest.mark.e2e

NAME = "mnv-sec"
PORT = 8000
OUTSIDER = f"{NAME}-outsider"
ENV_FILES = ("vllm.env", "ray-head.env", "ray-worker.env")
TOKEN_FILE = "/etc/multinode-vllm/ray-auth-token"
# The 0600 root files that are meant to hold secrets.
HOLDERS = (*(f"/etc/multinode-vllm/{f}" for f in ENV_FILES), TOKEN_FILE)
UNITS = ("ray-head", "ray-worker", "vllm", "multinode-vllm-firewall")
SECONDS: dict[str, float] = {}


def node_venv() -> Path:
    return Path(os.environ.get("MNV_NODE_VENV", "/var/tmp/multinode-vllm/venvs/node"))


# Runs in a node (python3 of the image), the secrets on stdin: never on a command line.
SEARCH = r"""
import json, os, stat, subprocess, sys
req = json.load(sys.stdin)
values = {k: v.encode() for k, v in req["secrets"].items()}
holders = set(req["holders"])
skip = tuple(req["skip"])
out = {"files": 0, "bytes": 0, "hits": [], "held": {}, "modes": {}, "places": {}}

def scan(label, data):
    for name, value in values.items():
        if value in data:
            out["hits"].append(f"{label}: {name}")

for path in req["modes"]:
    try:
        st = os.stat(path)
        out["modes"][path] = [oct(stat.S_IMODE(st.st_mode))[2:], st.st_uid, st.st_gid]
    except FileNotFoundError:
        pass

ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout
out["places"]["process arguments"] = len(ps.splitlines()) - 1
scan("ps -eo args", ps)
journal = subprocess.run(["journalctl", "--no-pager", "-o", "cat"], capture_output=True).stdout
out["places"]["journal lines (whole journal)"] = len(journal.splitlines())
scan("journalctl", journal)
units = subprocess.run(["journalctl", "--no-pager", "-o", "cat"] + [a for u in req["units"] for a in ("-u", u)],
                       capture_output=True).stdout
out["places"]["journal lines (ray/vllm/firewall units)"] = len(units.splitlines())
scan("journalctl -u ray-head -u ray-worker -u vllm", units)
for root in req["roots"]:
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.startswith(skip):
            dirnames[:] = []
            continue
        for f in filenames:
            path = os.path.join(dirpath, f)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > req["max_bytes"]:
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            out["files"] += 1
            out["bytes"] += len(data)
            found = [n for n, v in values.items() if v in data]
            if not found:
                continue
            if path in holders:
                out["held"][path] = found
            else:
                out["hits"].append(f"{path}: {', '.join(found)}")
print(json.dumps(out))
"""

# Runs in the outsider container or a node: TCP connects and HTTP requests, a timeout each.
PROBE = r"""
import json, socket, sys, urllib.error, urllib.request
req = json.load(sys.stdin)
out = {}
for host, port in req.get("tcp", []):
    s = socket.socket()
    s.settimeout(req["timeout"])
    try:
        s.connect((host, port))
        r = "open"
    except socket.timeout:
        r = "timeout"
    except ConnectionRefusedError:
        r = "refused"
    except OSError as e:
        r = "error %s" % e.errno
    finally:
        s.close()
    out["tcp %s:%s" % (host, port)] = r
for name, url, headers in req.get("http", []):
    if headers == "ray-token":
        headers = {"Authorization": "Bearer " + open(req["token_file"]).read().strip()}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=req["timeout"]) as resp:
            out[name] = resp.status
    except urllib.error.HTTPError as e:
        out[name] = e.code
    except (urllib.error.URLError, OSError) as e:
        out[name] = "no answer (%s)" % getattr(e, "reason", e)
print(json.dumps(out))
"""

# A Ray driver on a member node, with or without the token (node env is passed by `env`).
RAY_NODES = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print('NODES', len(ray.nodes()))"


@dataclass
class Deployed:
    bed: tb.Testbed
    secrets: dict[str, str]
    extra_file: Path
    run: Callable[..., subprocess.CompletedProcess[str]]
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def head_mgmt(self) -> str:
        return self.bed.node(1).mgmt_ip

    @property
    def head_fabric(self) -> str:
        return self.bed.node(1).ips["bond0"]

    def playbook(self, *args: str, phase: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        proc = self.run(
            "ansible-playbook", "-v", "-i", str(self.bed.inventory), *args, "-e", f"@{self.extra_file}", timeout=timeout
        )
        SECONDS[phase] = round(time.monotonic() - t0, 1)
        print(f"\n[phase] {phase}: {SECONDS[phase]} s (rc {proc.returncode})")
        self.outputs[phase] = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{phase}: rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        return proc

    def node_json(self, index: int, script: str, payload: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        proc = self.bed.exec(index, ["python3", "-c", script], input=json.dumps(payload), timeout=timeout)
        return json.loads(proc.stdout)


def podman(*args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}: {proc.stderr}")
    return proc.stdout


def free_index() -> int:
    """The subnet index of this test bed when it is up, else one no network or route on this host
    uses (the name's hashed default can collide with another engineer's test bed)."""
    state = load_state(NAME)
    if state is not None:
        return int(state["params"]["subnet_index"])
    networks = json.loads(podman("network", "ls", "--format", "json"))
    routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True, check=True).stdout)
    taken = existing_subnets(networks, routes)
    for index in range(150, 200):
        plans = plan_networks(tb.TestbedSpec(name=NAME, subnet_index=index))
        if not find_clashes(plans, taken):
            return index
    pytest.fail("no free 10.I.0.0/16 for the test bed in 10.150..10.199")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, run_ansible: Callable[..., Any]) -> Iterator[Deployed]:
    if not (node_venv() / "bin" / "vllm").exists():
        pytest.fail(f"node venv {node_venv()} missing: build it (multinode-vllm testbed) or set MNV_NODE_VENV")
    t0 = time.monotonic()
    bed = tb.up(tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", subnet_index=free_index(), local_inventory=False))
    SECONDS["testbed up"] = round(time.monotonic() - t0, 1)
    try:
        model = Path(bed.shared_dir) / "models" / "tiny-llama"
        if not (model / "config.json").exists():
            from multinode_vllm.testbed.tinymodel import make_tiny_llama

            make_tiny_llama(model)
        # The operator's own table: the firewall must leave it alone.
        bed.exec(1, ["nft", "add", "table", "inet", "operator_keep"])
        bed.exec(1, ["nft", "add", "chain", "inet", "operator_keep", "marker"])
        tag = secrets.token_hex(6)
        values = {
            "multinode_api_key": f"mnvsec-apikey-{tag}",
            "multinode_hf_token": f"hf_mnvsecHfToken{tag}",
            "multinode_ray_auth_token": f"mnvsecRayToken{tag}",
        }
        extra: dict[str, Any] = {**values, "ray_head_include_dashboard": True}
        if "MNV_NODE_VENV" in os.environ:
            extra["multinode_venv"] = str(node_venv())
        extra_file = tmp_path_factory.mktemp("secrets") / "secrets.json"
        extra_file.touch(mode=0o600)
        extra_file.write_text(json.dumps(extra))
        d = Deployed(bed=bed, secrets=values, extra_file=extra_file, run=run_ansible)
        d.playbook("site.yml", phase="site.yml (-v)")
        yield d
    finally:
        podman("rm", "-f", "-t", "0", OUTSIDER, check=False)
        print(f"\n[times] {json.dumps(SECONDS)}")
        if not os.environ.get("MNV_E2E_KEEP"):
            tb.down(NAME)


def test_secrets_appear_nowhere_but_the_0600_files(deployed: Deployed) -> None:
    d = deployed
    places: dict[str, int] = {}
    hits: list[str] = []
    for node in d.bed.nodes:
        res = d.node_json(
            node.index,
            SEARCH,
            {
                "secrets": d.secrets,
                "holders": list(HOLDERS),
                "modes": [*HOLDERS, *(f"/etc/systemd/system/{u}.service" for u in UNITS)],
                "units": list(UNITS),
                "roots": ["/etc", "/tmp", "/var/log", "/var/lib", "/var/tmp", "/run", "/root", "/srv", "/dev/shm"],
                # the node venv is the host's, mounted read-only; the model cache is searched from /srv
                "skip": [str(node_venv()), "/proc", "/sys"],
                "max_bytes": 256 * 1024 * 1024,
            },
        )
        name = node.hostname
        hits += [f"{name} {h}" for h in res["hits"]]
        for place, count in res["places"].items():
            places[f"{name} {place}"] = count
        places[f"{name} files searched"] = res["files"]
        print(f"[{name}] modes {res['modes']}; secrets held by {res['held']}; {res['bytes']} bytes in files")
        # env and token files: mode 0600, root:root; unit files carry no secret (searched above)
        for path in HOLDERS:
            if path in res["modes"]:
                assert res["modes"][path] == ["600", 0, 0], (name, path, res["modes"][path])
        # the search sees secrets where they are meant to be (the test can fail)
        assert TOKEN_FILE in res["held"] and res["held"][TOKEN_FILE] == ["multinode_ray_auth_token"], res["held"]
        if node.index == 1:
            assert set(res["held"]["/etc/multinode-vllm/vllm.env"]) == {"multinode_api_key", "multinode_hf_token"}
        places[f"{name} unit files"] = sum(1 for p in res["modes"] if p.startswith("/etc/systemd/system/"))
        places[f"{name} env/token files (0600 root)"] = sum(1 for p in res["modes"] if p in HOLDERS)
    for phase, text in d.outputs.items():
        places[f"ansible-playbook -v output, {phase} (lines)"] = len(text.splitlines())
        hits += [f"ansible output of {phase}: {n}" for n, v in d.secrets.items() if v in text]
    print("\n[secret search] places searched (docker inspect: not exercised, the native runtime runs here):")
    for place, count in places.items():
        print(f"  {place}: {count}")
    print(f"[secret search] {len(places)} places, {len(hits)} hits: {hits}")
    assert hits == []
    assert places["node1 files searched"] > 1000 and places["node1 process arguments"] > 10


@pytest.fixture
def outsider_ips(deployed: Deployed) -> Iterator[tuple[str, str]]:
    """The outsider container (no cluster member) on the bed's networks, for this test only."""
    with e2e_beds.outsider(deployed.bed, OUTSIDER) as ips:
        yield ips


def test_firewall_refuses_outsiders_and_ray_wants_its_token(deployed: Deployed, outsider_ips: tuple[str, str]) -> None:
    d = deployed
    mgmt = next(n for n in d.bed.networks if n.interface == "eth0")
    out_mgmt, out_fabric = outsider_ips
    key = d.secrets["multinode_api_key"]
    head_m, head_f = d.head_mgmt, d.head_fabric
    outsider_req = {
        "timeout": 3,
        # GCS, dashboard, Ray client, the API; Ray metrics, Prometheus, node_exporter (monitoring role)
        "tcp": [[h, p] for h in (head_m, head_f) for p in (6379, 8265, 10001, PORT, 8090, 9090, 9100)],
        "http": [
            ["job API (8265) from outsider", f"http://{head_m}:8265/api/jobs/", {}],
            ["dashboard (8265) from outsider", f"http://{head_m}:8265/", {}],
            ["OpenAI /v1/models without key", f"http://{head_m}:{PORT}/v1/models", {}],
            ["OpenAI /v1/models with key", f"http://{head_m}:{PORT}/v1/models", {"Authorization": f"Bearer {key}"}],
        ],
    }
    outsider = json.loads(podman("exec", "-i", OUTSIDER, "python3", "-c", PROBE, input=json.dumps(outsider_req)))
    print(f"\n[firewall] from the outsider {out_mgmt}/{out_fabric}:")
    for k, v in outsider.items():
        print(f"  {k}: {v}")
    for h in (head_m, head_f):
        for p in (6379, 8265, 10001, 8090, 9090, 9100):
            assert outsider[f"tcp {h}:{p}"] == "timeout", (h, p, outsider)
        assert outsider[f"tcp {h}:{PORT}"] == "open"
    assert str(outsider["job API (8265) from outsider"]).startswith("no answer")
    assert str(outsider["dashboard (8265) from outsider"]).startswith("no answer")
    assert outsider["OpenAI /v1/models without key"] == 401
    assert outsider["OpenAI /v1/models with key"] == 200

    # a member reaches the GCS; the dashboard stays on the head's loopback, behind the token
    member = d.node_json(2, PROBE, {"timeout": 3, "tcp": [[head_f, 6379], [head_f, 8265]]})
    head = d.node_json(
        1,
        PROBE,
        {
            "timeout": 10,
            "token_file": TOKEN_FILE,
            "http": [
                ["job API on loopback without token", "http://127.0.0.1:8265/api/jobs/", {}],
                ["job API on loopback with the Ray token", "http://127.0.0.1:8265/api/jobs/", "ray-token"],
            ],
        },
    )
    print(f"[firewall] from the member node2: {member}\n[firewall] on the head: {head}")
    assert member[f"tcp {head_f}:6379"] == "open" and member[f"tcp {head_f}:8265"] == "timeout"
    assert head["job API on loopback without token"] == 401
    assert head["job API on loopback with the Ray token"] == 200

    # the GCS wants the token even from a member
    python = f"{node_venv()}/bin/python"
    no_token_argv = ["timeout", "90", python, "-c", RAY_NODES, f"{head_f}:6379"]
    no_token = d.bed.exec(2, no_token_argv, check=False)
    with_token = d.bed.exec(
        2,
        ["env", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={TOKEN_FILE}", *no_token_argv],
        check=False,
    )
    print(f"[ray] member without token: rc {no_token.returncode} {no_token.stderr.strip().splitlines()[-1:]}")
    print(f"[ray] member with token: rc {with_token.returncode} {with_token.stdout.strip()}")
    assert no_token.returncode != 0 and "NODES" not in no_token.stdout
    assert with_token.returncode == 0 and "NODES 2" in with_token.stdout

    # the firewall's own table on both nodes, the operator's table untouched
    for node in d.bed.nodes:
        tables = d.bed.exec(node.index, ["nft", "list", "tables"]).stdout
        assert "table inet multinode_vllm" in tables
    assert "table inet operator_keep" in d.bed.exec(1, ["nft", "list", "tables"]).stdout

    # API clients: only the controller's address -> the outsider times out; back to the default
    controller = mgmt.gateway
    d.extra_file.write_text(
        json.dumps({**json.loads(d.extra_file.read_text()), "cluster_firewall_api_clients": [f"{controller}/32"]})
    )
    d.playbook("playbooks/cluster.yml", "--tags", "firewall", phase="--tags firewall (API for the controller only)")
    api_probe = json.dumps({"timeout": 3, "tcp": [[head_m, PORT]]})
    closed = json.loads(podman("exec", "-i", OUTSIDER, "python3", "-c", PROBE, input=api_probe))
    cfg = json.loads(d.extra_file.read_text())
    cfg.pop("cluster_firewall_api_clients")
    d.extra_file.write_text(json.dumps(cfg))
    d.playbook("playbooks/cluster.yml", "--tags", "firewall", phase="--tags firewall (default API clients)")
    reopened = json.loads(podman("exec", "-i", OUTSIDER, "python3", "-c", PROBE, input=api_probe))
    print(f"[firewall] API from the outsider with clients=[{controller}/32]: {closed}; default again: {reopened}")
    assert closed[f"tcp {head_m}:{PORT}"] == "timeout" and reopened[f"tcp {head_m}:{PORT}"] == "open"
    assert "table inet operator_keep" in d.bed.exec(1, ["nft", "list", "tables"]).stdout
    for phase, text in d.outputs.items():
        assert not [n for n, v in d.secrets.items() if v in text], phase
