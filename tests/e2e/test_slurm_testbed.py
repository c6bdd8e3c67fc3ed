"""The SLURM path (seed 002) end to end on its own test bed (mnv-slurm, layout slurm): node1 the
slurmctld + login host, node2 and node3 slurmd compute nodes with one fake GPU each, SLURM 22.05
(Debian's slurm-wlm) installed by the collection's own role.

One story, in order: install SLURM; submit with the ray backend (PP 2 across the
two compute nodes; the job's gate prints that Ray sees both and `ray status` lists two active
nodes); a chat answer through the endpoint; a rerun keeps the job (changed=0, same id); the backend
changed to mp (a changed serve variable) replaces it (new id, new answer: both backends served);
status shows the job; a partition too small for the plan is stopped before sbatch with numbers; a
job whose vLLM dies at start (a model path that does not exist) is stopped by the gate with the tail
of its output, well within a minute of dying; teardown leaves squeue empty, the nodes idle and no
Ray or vLLM process on either compute node. Phase times are printed (pytest -s).
"""

from __future__ import annotations

import calendar
import functools
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e_beds
import pytest
from e2e_beds import fresh_bed
from engine_load import every_engine_serves

from multinode_vllm import testbed as tb

pytestmark = pytest.mark.e2e

NAME = "mnv-slurm"
KEY = "mnv-testbed-key"  # inventories/local/group_vars/all/serve.yml
JOB = re.compile(r"SLURM job (\d+) \((kept|submitted)\) on (\S+), backend (\w+)")
PHASES: dict[str, float] = {}


@pytest.fixture(scope="module")
def bed(node_venv: Path) -> Iterator[tb.Testbed]:
    with fresh_bed(tb.TestbedSpec(name=NAME, nodes=3, layout="slurm", gpus_per_node=1, local_inventory=False)) as b:
        yield b


play = functools.partial(e2e_beds.play, phases=PHASES, label="slurm")


def job_of(out: str) -> tuple[str, str, str, str]:
    m = JOB.search(" ".join(out.split()))
    assert m, out[-3000:]
    return m.group(1), m.group(2), m.group(3), m.group(4)


def sh(bed: tb.Testbed, index: int, script: str) -> str:
    return bed.exec(index, ["sh", "-c", script], check=False).stdout


def chat(bed: tb.Testbed) -> str:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "min_tokens": 1}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    # the head is the job's first node, node2 (SLURM's NodeAddr: its management address)
    req = urllib.request.Request(
        f"http://{bed.node(2).mgmt_ip}:8000/v1/chat/completions", json.dumps(body).encode(), headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


def output(bed: tb.Testbed, job: str) -> str:
    return (Path(bed.shared_dir) / "slurm" / f"multinode-vllm-{job}.out").read_text(errors="replace")


def test_slurm_job_serves_both_backends_idempotently(
    bed: tb.Testbed, run_ansible: Callable[..., Any], node_venv: Path
) -> None:
    t_all = time.monotonic()
    play(run_ansible, bed, "playbooks/slurm_install.yml", phase="install SLURM")
    # only the right daemon on each node
    assert sh(bed, 1, "systemctl is-enabled slurmctld; systemctl is-enabled slurmd").split() == ["enabled", "disabled"]
    assert sh(bed, 2, "systemctl is-enabled slurmd; systemctl is-enabled slurmctld").split() == ["enabled", "disabled"]
    assert sh(bed, 2, "stat -c '%U %a' /etc/munge/munge.key").strip() == "munge 400"

    # ray backend: PP 2 across node2 and node3; submitted by site.yml, as on every path (validate checks
    # the login host's variables, the node phases find no cluster hosts, the slurm phase submits)
    _, out = play(run_ansible, bed, "site.yml", phase="submit (ray, site.yml)")
    assert "SLURM inventory: the variables of node1 (slurm_login) are checked here" in " ".join(out.split())
    ray_job, how, nodes, backend = job_of(out)
    assert (how, nodes, backend) == ("submitted", "node[2-3]", "ray")
    log = output(bed, ray_job)
    assert "Ray sees 2 of 2 nodes" in log, log[-3000:]
    active = log.split("Active:", 1)[1].split("Pending:", 1)[0]
    assert len(re.findall(r"node_[0-9a-f]+", active)) == 2, active
    # the second pipeline stage runs on node3: a Ray worker actor of vLLM there
    node3 = sh(bed, 3, "ps -eo args")
    assert "RayWorker" in node3 or f"ip={bed.node(3).ips['bond0']}" in log, node3
    # secrets: in the 0600 file, never in the script or on a command line
    script = sh(bed, 1, f"cat {bed.shared_dir}/slurm/multinode-vllm.sbatch")
    assert KEY not in script and "multinode-vllm.secrets" in script
    assert sh(bed, 1, f"stat -c %a {bed.shared_dir}/slurm/multinode-vllm.secrets").strip() == "600"
    assert KEY not in sh(bed, 2, "ps -eo args")
    # Ray token authentication inside the job: the mode and the 0600 file's path, never the token
    token_file = f"{bed.shared_dir}/slurm/multinode-vllm.ray-auth-token"
    assert "RAY_AUTH_MODE=token" in script and f"RAY_AUTH_TOKEN_PATH={token_file}" in script, script
    assert sh(bed, 1, f"stat -c %a {token_file}").strip() == "600"
    token = sh(bed, 1, f"cat {token_file}").strip()
    assert len(token) >= 32 and token not in script and token not in log
    assert token not in sh(bed, 2, "ps -eo args") + sh(bed, 3, "ps -eo args")
    head_ip = re.search(r"head \S+ \(([0-9.]+)\)", log)
    assert head_ip, log[-3000:]
    # a Ray client without the token is refused by the job's GCS
    refused = bed.exec(
        3,
        ["sh", "-c", f"RAY_AUTH_MODE=disabled timeout 60 {node_venv}/bin/ray status --address {head_ip.group(1)}:6379"],
        check=False,
    )
    print(f"[slurm ray without the token] rc={refused.returncode} {(refused.stdout + refused.stderr)[-300:]!r}")
    assert refused.returncode != 0 and "node_" not in refused.stdout
    first = chat(bed)
    print(f"[slurm answer, ray] {first!r}")
    assert first

    recap, out = play(run_ansible, bed, "playbooks/slurm.yml", phase="rerun (ray)")
    assert set(recap.values()) == {0}, recap
    assert job_of(out)[:2] == (ray_job, "kept")

    # a changed serve variable (the backend): the job is replaced
    _, out = play(run_ansible, bed, "playbooks/slurm.yml", phase="submit (mp)", extra={"multinode_backend": "mp"})
    mp_job, how, _, backend = job_of(out)
    assert (how, backend) == ("submitted", "mp") and int(mp_job) > int(ray_job)
    assert ray_job not in sh(bed, 1, "squeue -h -t RUNNING,PENDING -o %i").split()  # scancelled
    second = chat(bed)
    print(f"[slurm answer, mp] {second!r}")
    assert second
    assert "backend mp" in output(bed, mp_job)

    # status through the command every path uses (playbooks/status.yml imports slurm_status.yml)
    _, out = play(run_ansible, bed, "playbooks/status.yml", phase="status", extra={"multinode_backend": "mp"})
    flat = " ".join(out.split())
    assert f"job_id: '{mp_job}'" in flat and "state: RUNNING" in flat and "healthy: true" in flat, out[-3000:]

    # data parallel on the mp backend: one replica per compute node (DP 2, TP 1, PP 1); a new job whose
    # engines both serve (the head's /metrics counts requests per engine)
    dp = {
        "multinode_backend": "mp",
        "vllm_serve_data_parallel_size": 2,
        "vllm_serve_tensor_parallel_size": 1,  # the bed's group_vars give PP 2 for the one-replica jobs
        "vllm_serve_pipeline_parallel_size": 1,
    }
    _, out = play(run_ansible, bed, "playbooks/slurm.yml", phase="submit (mp, data parallel 2)", extra=dp)
    dp_job, how, _, backend = job_of(out)
    assert (how, backend) == ("submitted", "mp") and int(dp_job) > int(mp_job)
    assert "--data-parallel-size 2" in sh(bed, 1, f"cat {bed.shared_dir}/slurm/multinode-vllm.sbatch")
    every_engine_serves(f"http://{bed.node(2).mgmt_ip}:8000", lambda: chat(bed), label="slurm dp2")
    # each node says the fabric it chose, by the hosts path's rules (bond0 on this bed; nothing given)
    dp_log = output(bed, dp_job)
    for index in (2, 3):
        assert re.search(
            rf"node{index} fabric \(bond0 present \(bare metal\)\): NODE_IP={bed.node(index).ips['bond0']}", dp_log
        ), dp_log[-3000:]

    # a partition too small for the plan: stopped before sbatch, with numbers
    before = sh(bed, 1, "squeue -h -o %i").split()
    _, out = play(
        run_ansible,
        bed,
        "playbooks/slurm.yml",
        phase="too small",
        ok=False,
        extra={"slurm_nodes": 3, "vllm_serve_pipeline_parallel_size": 3},  # a plan of PP 3 over 3 nodes
    )
    flat = " ".join(out.split())
    assert "needs 3 nodes x 1 GPUs = 3 GPUs, the partition has 2 nodes" in flat, out[-3000:]
    assert sh(bed, 1, "squeue -h -o %i").split() == before  # nothing submitted, nothing cancelled

    # a job that dies at start: the gate stops with the tail of its output, soon after it died
    _, out = play(
        run_ansible,
        bed,
        "playbooks/slurm.yml",
        phase="dies at start",
        ok=False,
        extra={"multinode_backend": "mp", "multinode_model": f"{bed.shared_dir}/models/missing"},
    )
    stopped_at = time.time()
    flat = " ".join(out.split())
    died = re.search(r"SLURM job (\d+) (ended|left the queue)", flat)
    assert died, out[-4000:]
    assert "Last lines of" in flat and "models/missing" in flat, out[-4000:]
    job = sh(bed, 1, f"scontrol show job -o {died.group(1)}")
    end = re.search(r"EndTime=(\S+)", job)
    assert end, job
    # the nodes share this machine's clock (UTC)
    after_death = stopped_at - calendar.timegm(time.strptime(end.group(1), "%Y-%m-%dT%H:%M:%S"))
    print(
        f"[slurm dies at start] job {died.group(1)} {re.findall(r'JobState=[A-Z_]+', job)}; "
        f"the run ended {after_death:.0f} s after it"
    )
    assert after_death < 60

    play(run_ansible, bed, "playbooks/teardown.yml", phase="teardown")  # imports slurm_teardown.yml
    assert sh(bed, 1, "squeue -h").strip() == ""
    states = set(sh(bed, 1, "sinfo -h -N -o %T").split())
    # free: idle, or "planned" (an idle node the backfill scheduler had set aside for the pending job
    # that was just cancelled; the flag clears at its next pass, bf_interval 30 s)
    assert states and states <= {"idle", "planned"}, states
    for index in (2, 3):
        args = sh(bed, index, "ps -eo args").splitlines()
        left = [a for a in args if re.search(r"bin/(ray|vllm) |raylet|gcs_server|RayWorkerProc|EngineCore", a)]
        assert left == [], f"node{index}: {left}"
    print(f"\n[slurm phases] {PHASES}; whole story {round(time.monotonic() - t_all, 1)} s")
