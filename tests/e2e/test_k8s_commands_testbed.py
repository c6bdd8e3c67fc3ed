"""The Kubernetes path's commands, run for real (issue 17, deliverable 4), on their own test bed.

No API server or kubelet can run here, so this plays the kubelet's part for the LeaderWorkerSet and
KubeRay flavours and nothing more: `multinode-vllm render --flavour lws|kuberay` renders the manifests from the test
bed's inventory (the same variables as the hosts path); the leader's and the worker's container
`command` + `args` run unchanged on two test-bed nodes, with the environment the manifest gives them
(literal values; `status.podIP` as the node's address; the API key `secretKeyRef` as a key the test
generates; the optional HF token absent) plus what the LWS controller injects (`LWS_LEADER_ADDRESS`,
`LWS_GROUP_SIZE`, `LWS_WORKER_INDEX`; KubeRay: the head Service's DNS name, `RAY_HEAD_SERVICE`, as
the head node's address, since ray.io/overwrite-container-cmd leaves the command to ours), the image's
PATH (the node venv) and the model claim's
`subPath` at the container's mount point (/mnt/models). They must form the Ray cluster and serve a
chat answer across the two nodes (TP 1 x PP 2): a manifest whose command cannot serve fails here
even though its schema is valid.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.tinymodel import make_tiny_llama

pytestmark = pytest.mark.e2e

NAME = "mnv-k8s"
CLI = [sys.executable, "-m", "multinode_vllm"]
NODE_PATH = "/var/tmp/multinode-vllm/venvs/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def bed() -> Iterator[tb.Testbed]:
    tb.down(NAME)
    b = tb.up(tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", local_inventory=False))
    try:
        make_tiny_llama(Path(b.shared_dir) / "models" / "tiny-llama", quiet=True)
        yield b
    finally:
        tb.down(NAME)


def render(bed: tb.Testbed, out: Path, flavour: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [*CLI, "render", "-i", str(bed.inventory), "--out", str(out), "--flavour", flavour, "--no-apply"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CI": "true"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]


def pods(
    docs: list[dict[str, Any]], flavour: str, leader_ip: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(the leader or head container, a worker container, what the controller injects into both)."""
    if flavour == "lws":
        group = next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
        assert group["size"] == 2
        injected = {"LWS_LEADER_ADDRESS": leader_ip, "LWS_GROUP_SIZE": str(group["size"])}
        return (
            group["leaderTemplate"]["spec"]["containers"][0],
            group["workerTemplate"]["spec"]["containers"][0],
            injected,
        )
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["replicas"] == 1  # PP 2: the head and one worker pod
    # the worker's RAY_HEAD_SERVICE names the head Service in cluster DNS: here, the head node's address
    return (
        cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
        group["template"]["spec"]["containers"][0],
        {"RAY_HEAD_SERVICE": leader_ip},
    )


def pod_env(container: dict[str, Any], pod_ip: str, secret: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's env as the kubelet resolves it (fieldRef, secretKeyRef, literal values)."""
    fields = {"status.podIP": pod_ip, "metadata.namespace": "default"}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if (ref["name"], ref["key"]) in secret:
                env[item["name"]] = secret[(ref["name"], ref["key"])]
            else:
                assert ref.get("optional"), f"{item['name']}: Secret {ref['name']}/{ref['key']} is not optional"
        else:
            raise AssertionError(f"{item['name']}: a valueFrom the test does not resolve: {source}")
    return env


def start_pod(bed: tb.Testbed, index: int, container: dict[str, Any], env: dict[str, str], tag: str) -> None:
    """Run the container's command + args on the node in the background (log: /tmp/<tag>.log)."""
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    claim = Path(bed.shared_dir) / "models" / mount["subPath"]
    bed.exec(
        index, ["sh", "-c", f"mkdir -p /mnt && ln -sfn {shlex.quote(str(claim))} {mount['mountPath']}"], check=True
    )
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    runner = Path(bed.shared_dir) / "k8s" / f"{tag}.sh"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(
        f"echo $$ > /tmp/{tag}.pid\nexport PATH={NODE_PATH}\n{exports}"
        f"exec {shlex.join(container['command'] + container['args'])}\n"
    )
    runner.chmod(0o600)
    bed.exec(index, ["sh", "-c", f"setsid nohup sh {runner} >/tmp/{tag}.log 2>&1 </dev/null &"], check=True)


def stop_pod(bed: tb.Testbed, index: int, tag: str) -> None:
    """The pod deleted: its process group, and the Ray daemons `ray start` left behind; ports free again."""
    script = (
        f"kill -TERM -- -$(cat /tmp/{tag}.pid) 2>/dev/null; PATH={NODE_PATH} ray stop --force >/dev/null 2>&1; "
        "for i in $(seq 60); do ss -Hltn | grep -qE ':(6379|8000) ' || exit 0; sleep 1; done; exit 1"
    )
    assert bed.exec(index, ["sh", "-c", script], check=False).returncode == 0, f"node{index}: ports still in use"


def log(bed: tb.Testbed, index: int, tag: str) -> str:
    return bed.exec(index, ["sh", "-c", f"tail -n 40 /tmp/{tag}.log"], check=False).stdout


@pytest.mark.parametrize("flavour", ["lws", "kuberay"])
def test_leader_and_worker_commands_serve_across_two_nodes(bed: tb.Testbed, tmp_path: Path, flavour: str) -> None:
    try:
        serve_and_answer(bed, tmp_path, flavour)
    finally:  # the pods deleted: the next flavour starts on free nodes
        for i, tag in ((1, "leader"), (2, "worker")):
            stop_pod(bed, i, tag)


def serve_and_answer(bed: tb.Testbed, tmp_path: Path, flavour: str) -> None:
    leader_ip, worker_ip = bed.node(1).mgmt_ip, bed.node(2).mgmt_ip
    leader, worker, injected = pods(render(bed, tmp_path / "manifests", flavour), flavour, leader_ip)
    key = secrets.token_hex(16)
    api_ref = next(e["valueFrom"]["secretKeyRef"] for e in leader["env"] if e["name"] == "VLLM_API_KEY")
    secret = {(api_ref["name"], api_ref["key"]): key}
    rank = {"lws": [{"LWS_WORKER_INDEX": "0"}, {"LWS_WORKER_INDEX": "1"}], "kuberay": [{}, {}]}[flavour]

    t0 = time.monotonic()
    start_pod(bed, 1, leader, pod_env(leader, leader_ip, secret) | injected | rank[0], "leader")
    start_pod(bed, 2, worker, pod_env(worker, worker_ip, secret) | injected | rank[1], "worker")
    url = f"http://{leader_ip}:{leader['ports'][0]['containerPort']}"
    deadline, status = time.monotonic() + 600, -1
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                status = resp.status
        except (urllib.error.URLError, OSError):
            status = -1
        if status == 200:
            break
        gone = bed.exec(1, ["sh", "-c", "ps -eo args | grep -c '[v]llm serve\\|[r]ay start\\|[s]eq 120'"], check=False)
        assert gone.stdout.strip() != "0", f"the leader's command ended:\n{log(bed, 1, 'leader')}"
        time.sleep(3)
    healthy = time.monotonic() - t0
    assert status == 200, f"no /health 200 in 600 s\nleader:\n{log(bed, 1, 'leader')}\nworker:\n{log(bed, 2, 'worker')}"

    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "min_tokens": 1}
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(
            urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode()), timeout=60
        )
    assert denied.value.code == 401  # the key from the Secret reference is enforced
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        text = json.loads(resp.read())["choices"][0]["message"]["content"]
    print(f"\n[k8s {flavour}] healthy after {healthy:.1f} s; answer {text!r}")
    assert text
    # the second pipeline stage ran on the worker's node: its Ray joined the leader's
    ray_status = bed.exec(1, ["sh", "-c", f"PATH={NODE_PATH} ray status --address {leader_ip}:6379"], check=False)
    assert ray_status.stdout.count(" node_") >= 2, ray_status.stdout[-2000:]
    # and vLLM's second stage is a Ray actor there (Ray prefixes its log lines with the actor's ip)
    stage = bed.exec(1, ["grep", "-c", f"ip={worker_ip})", "/tmp/leader.log"], check=False)
    assert int(stage.stdout.strip() or 0) > 0, log(bed, 1, "leader")
