"""The mp backend end to end on its own test bed (mnv-mp): no Ray, `vllm serve --nnodes 2` on
both nodes (`--headless` on the worker), the tiny model with pipeline parallel 2 across them.

site.yml with multinode_backend=mp; a chat completion; the units' command lines; a rerun with
changed=0; the worker's headless vLLM killed and restarted by systemd (the head's engine lost its
second stage) brought back by one rerun; teardown. Phase times are printed (pytest -s).

No API key is given (a custom inventory without one): the collection fails closed, generating a key
into the inventory's .credentials/api-key (0600) on the controller; the endpoint answers 401 without
it and 200 with it. status with multinode_api_open=true warns.

Then, on the same bed (torn down by the first test), data parallel 2 on the mp backend: one replica
(TP 1 x PP 1) per node, `--data-parallel-size 2 --data-parallel-size-local 1` on both and
`--headless --data-parallel-start-rank 1` on the worker; the serve gate checks each engine's
finished-request counter in /metrics; 20 more chat completions sent at once move both engines'
counters; a rerun changes nothing.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e_beds
import pytest
from engine_load import CHAT_BODY, every_engine_serves

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.tinymodel import make_tiny_llama

pytestmark = pytest.mark.e2e

NAME = "mnv-mp"
# No key given (the committed test-bed group_vars set one; the extra var empties it): generated.
MP = {"multinode_backend": "mp", "multinode_api_key": ""}
PHASES: dict[str, float] = {}


@pytest.fixture(scope="module")
def bed() -> Iterator[tb.Testbed]:
    tb.down(NAME)  # a first run from bare nodes, even after an interrupted session
    b = tb.up(tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", local_inventory=False))
    try:
        make_tiny_llama(Path(b.shared_dir) / "models" / "tiny-llama", quiet=True)
        yield b
    finally:
        tb.down(NAME)


# site.yml etc. with the mp backend (extra defaults to MP), timed into PHASES
play = functools.partial(e2e_beds.play, phases=PHASES, label="mp", extra=MP, timeout=900)


def sh(bed: tb.Testbed, index: int, script: str) -> str:
    return bed.exec(index, ["sh", "-c", script], check=False).stdout


def generated_key(bed: tb.Testbed) -> Path:
    return bed.inventory / ".credentials" / "api-key"


def chat(bed: tb.Testbed, key: str | None = None) -> str:
    key = generated_key(bed).read_text().strip() if key is None else key
    body = CHAT_BODY
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(
        f"http://{bed.node(1).mgmt_ip}:8000/v1/chat/completions", json.dumps(body).encode(), headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


def started(bed: tb.Testbed, index: int) -> int:
    """The vllm unit's start (monotonic µs; the nodes share this machine's kernel clock)."""
    return int(sh(bed, index, "systemctl show -p ExecMainStartTimestampMonotonic --value vllm").strip() or 0)


def test_mp_backend_serves_pp2_across_two_nodes_and_recovers(bed: tb.Testbed, run_ansible: Callable[..., Any]) -> None:
    generated_key(bed).unlink(missing_ok=True)
    _, first = play(run_ansible, bed, "site.yml", phase="site.yml (first run)")
    # fail closed: a key was generated on the controller, 0600, and the run says where (not what)
    key_file = generated_key(bed)
    key = key_file.read_text().strip()
    assert len(key) == 48 and key.isalnum()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert f"API key: generated, in {key_file}" in " ".join(first.split()), first[-3000:]
    assert key not in first
    for wrong in ("", "not-the-key"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            chat(bed, wrong)
        assert denied.value.code == 401, f"key {wrong!r}: HTTP {denied.value.code}"
    text = chat(bed)
    print(f"[mp answer] {text!r} (generated key: 401 without it, 200 with it)")
    assert text

    head = sh(bed, 1, "systemctl cat vllm")
    worker = sh(bed, 2, "systemctl cat vllm")
    head_ip, worker_ip = bed.node(1).ips["bond0"], bed.node(2).ips["bond0"]
    for unit, rank in ((head, "0"), (worker, "1")):
        assert '"--distributed-executor-backend" "mp"' in unit
        assert '"--nnodes" "2"' in unit and f'"--node-rank" "{rank}"' in unit
        assert f'"--master-addr" "{head_ip}"' in unit
    assert '"--headless"' in worker and '"--headless"' not in head
    assert f"VLLM_HOST_IP={worker_ip}" in sh(bed, 2, "cat /etc/multinode-vllm/vllm.env").replace('"', "")
    # no Ray with mp
    assert sh(bed, 1, "systemctl is-active ray-head").strip() != "active"
    assert sh(bed, 2, "systemctl is-active ray-worker").strip() != "active"
    # both nodes hold a pipeline stage
    assert "Worker_PP1" in sh(bed, 2, "journalctl -u vllm --no-pager")

    recap, _ = play(run_ansible, bed, "site.yml", phase="site.yml (rerun)")
    assert set(recap.values()) == {0}, recap

    # the worker's headless vLLM dies; systemd (Restart=on-failure) starts it again after 10 s
    before = started(bed, 2)
    sh(bed, 2, "systemctl kill --signal=SIGKILL vllm")
    deadline = time.monotonic() + 120
    while started(bed, 2) in (0, before) and time.monotonic() < deadline:
        time.sleep(2)
    assert started(bed, 2) not in (0, before), "systemd did not restart the worker's vLLM"
    restarted_at = started(bed, 2)
    _, out = play(run_ansible, bed, "playbooks/serve.yml", phase="serve rerun after a killed headless worker")
    by_rerun = "node2 vllm started after vLLM" in out
    print(f"[mp recovery] head vLLM restarted by {'the rerun' if by_rerun else 'itself (systemd)'}")
    # the head's engine (which lost its second stage) started again after the worker came back
    assert started(bed, 1) > restarted_at
    assert chat(bed)

    # an explicitly open API is reported on every status run
    status = run_ansible(
        "ansible-playbook",
        "-i",
        str(bed.inventory),
        "playbooks/status.yml",
        "-e",
        json.dumps({**MP, "multinode_api_open": True}),
        timeout=300,
    )
    assert "the API is open: vLLM serves without a key (multinode_api_open: true)" in " ".join(status.stdout.split()), (
        status.stdout[-3000:]
    )

    play(run_ansible, bed, "playbooks/teardown.yml", phase="teardown")
    for i in (1, 2):
        assert sh(bed, i, "systemctl is-active vllm").strip() != "active"
    assert (Path(bed.shared_dir) / "models" / "tiny-llama" / "config.json").exists()
    print(f"[mp phases] {json.dumps(PHASES)}")


DP = {
    **MP,
    "vllm_serve_data_parallel_size": 2,
    "vllm_serve_tensor_parallel_size": 1,
    "vllm_serve_pipeline_parallel_size": 1,
}


def test_mp_backend_serves_data_parallel_2_one_engine_per_node(
    bed: tb.Testbed, run_ansible: Callable[..., Any]
) -> None:
    _, first = play(run_ansible, bed, "site.yml", phase="site.yml data parallel 2 (from torn down)", extra=DP)
    assert "every engine served" in first, first[-3000:]
    head, worker = sh(bed, 1, "systemctl cat vllm"), sh(bed, 2, "systemctl cat vllm")
    head_ip = bed.node(1).ips["bond0"]
    for unit in (head, worker):
        assert '"--data-parallel-size" "2"' in unit and '"--data-parallel-size-local" "1"' in unit
        assert f'"--data-parallel-address" "{head_ip}"' in unit and '"--data-parallel-rpc-port" "29550"' in unit
        assert '"--nnodes"' not in unit
    assert '"--headless" "--data-parallel-start-rank" "1"' in worker
    assert '"--headless"' not in head and "--data-parallel-start-rank" not in head
    # the worker's node runs engine 1 (vLLM names its process EngineCore_DP1)
    assert "EngineCore_DP1" in sh(bed, 2, "journalctl -u vllm --no-pager")

    every_engine_serves(f"http://{bed.node(1).mgmt_ip}:8000", lambda: chat(bed), label="mp dp2")

    recap, _ = play(run_ansible, bed, "site.yml", phase="site.yml data parallel 2 (rerun)", extra=DP)
    assert set(recap.values()) == {0}, recap

    # engine 1 killed (SIGKILL of EngineCore_DP1 on node2, the headless node): the head's /health stays
    # 200, so the rerun's probe sends requests to every engine, finds engine 1 silent (or systemd
    # already restarted node2's vLLM: a member started after the head's), restarts the group, and the
    # gate sees both engines serve; the next rerun changes nothing
    head_started = started(bed, 1)
    killed = sh(
        bed,
        2,
        "pids=$(ps -eo pid=,args= | awk '/EngineCore_DP1/ && !/awk/ {print $1}'); "
        '[ -n "$pids" ] && kill -9 $pids && echo killed $pids',
    )
    assert "killed" in killed, sh(bed, 2, "ps -eo pid,args")[-2000:]
    _, healed = play(run_ansible, bed, "site.yml", phase="site.yml data parallel 2 (engine 1 killed)", extra=DP)
    flat = " ".join(healed.split())
    by_probe = "a data-parallel engine does not serve" in flat
    assert by_probe or "node2 vllm started after vLLM" in flat, healed[-4000:]
    print(f"[mp dp recovery] found by {'the engine probe' if by_probe else 'the start times'}")
    assert "every engine served" in healed, healed[-3000:]
    assert started(bed, 1) > head_started, "the head's vLLM was not restarted"
    every_engine_serves(f"http://{bed.node(1).mgmt_ip}:8000", lambda: chat(bed), label="mp dp2 after a killed engine")
    recap, _ = play(run_ansible, bed, "site.yml", phase="site.yml data parallel 2 (rerun after the heal)", extra=DP)
    assert set(recap.values()) == {0}, recap

    print(f"[mp phases] {json.dumps(PHASES)}")
