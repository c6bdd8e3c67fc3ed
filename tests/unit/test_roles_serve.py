"""Roles multinode, ray_head, ray_worker, vllm_serve: specs match defaults; what they render.

The rendering tests run the real ansible-playbook on two local hosts (head + worker) with the
roles' own defaults and vars files and the real templates; only the facts modules of preflight
(NIC, GPU, InfiniBand reads) are replaced by a module that returns given facts.
"""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import FAKE_FACTS_MODULE, ansible_playbook, local_cluster_inventory, role_vars_files

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
OUR_ROLES = ["multinode", "ray_head", "ray_worker", "vllm_serve"]
HEAD, WORKER = "10.0.1.11", "10.0.1.12"


@pytest.mark.parametrize("role", OUR_ROLES)
def test_derived_vars_are_underscored_and_meta_depends_on_multinode(role: str) -> None:
    derived = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())
    assert all(k.startswith(f"_{role}_") for k in derived), [k for k in derived if not k.startswith(f"_{role}_")]
    meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())
    deps = [d["role"] if isinstance(d, dict) else d for d in meta["dependencies"]]
    assert deps == ([] if role == "multinode" else ["multinode.vllm.multinode"])


RENDER_PLAYBOOK = """\
- name: Render
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Set the preflight facts
      fake_facts:
        facts: "{{{{ node_facts }}}}"
    # What the multinode role's once-per-run set-up notes (roles/multinode/tasks/main.yml).
    - name: Note the GPUs this node announces to Ray
      ansible.builtin.set_fact:
        multinode_node_gpus: "{{{{ multinode_ray_num_gpus | int }}}}"
    - name: Write the derived values
      ansible.builtin.copy:
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0644"
        content: "{{{{ derived | to_json }}}}"
      vars:
        derived:
          head_args: "{{{{ _ray_head_args }}}}"
          head_argv: "{{{{ _ray_head_argv }}}}"
          worker_args: "{{{{ _ray_worker_args }}}}"
          vllm_args: "{{{{ _vllm_serve_args }}}}"
          vllm_env: "{{{{ _vllm_serve_env }}}}"
          vllm_secret_env: "{{{{ _vllm_serve_secret_env }}}}"
          ray_env: "{{{{ _ray_head_env }}}}"
          runs_here: "{{{{ _vllm_serve_runs_here }}}}"
          node_ips: "{{{{ _multinode_node_ips }}}}"
          expected_gpus: "{{{{ _multinode_expected_gpus | int }}}}"
          ray_python: "{{{{ _multinode_ray_python }}}}"
          docker_volumes: "{{{{ _vllm_serve_docker_volumes }}}}"
          docker_devices: "{{{{ _multinode_docker_devices }}}}"
          docker_env: "{{{{ dict(_vllm_serve_env.keys() | zip(_vllm_serve_env.values() | map('string'))) }}}}"
          entrypoint: "{{{{ _multinode_docker_entrypoint_script }}}}"
          endpoint_host: "{{{{ _vllm_serve_public_host }}}}"
    - name: Render the unit and env templates
      ansible.builtin.template:
        src: "{root}/roles/{{{{ item.role }}}}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item.src | regex_replace('.j2$', '') }}}}"
        mode: "0600"
      loop:
        - {{role: ray_head, src: ray-head.service.j2}}
        - {{role: ray_head, src: ray.env.j2}}
        - {{role: ray_worker, src: ray-worker.service.j2}}
        - {{role: vllm_serve, src: vllm.service.j2}}
        - {{role: vllm_serve, src: vllm.env.j2}}
"""


def facts(ip: str, ib: bool) -> dict[str, Any]:
    return {
        "multinode_fabric": {
            "control_interface": "bond0",
            "control_ip": ip,
            "nccl_socket_ifname": "bond0",
            "gloo_socket_ifname": "bond0",
            "data_interfaces": [],
        },
        "multinode_gpu": {"count": 8, "driver_version": "550.54.15", "gpus": []},
        "multinode_ib": {"present": ib, "nccl_ib_hca": "mlx5" if ib else "", "active_ports": []},
    }


def render(tmp_path: Path, ib: bool = False, **extra: Any) -> dict[str, Any]:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    out = tmp_path / "out"
    out.mkdir()
    inv = local_cluster_inventory(
        {"node1": {"node_facts": facts(HEAD, ib), "ansible_host": "192.0.2.11"}},
        {"node2": {"node_facts": facts(WORKER, ib)}},
    )
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(
        RENDER_PLAYBOOK.format(
            root=ROOT, out=out, vars_files=role_vars_files("multinode", "ray_head", "ray_worker", "vllm_serve")
        )
    )
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    proc = ansible_playbook(
        *("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml")),
        *("-e", f"@{tmp_path / 'extra.json'}"),
        timeout=120,
        ANSIBLE_LIBRARY=str(lib),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = {}
    for host in ("node1", "node2"):
        result[host] = json.loads((out / f"{host}.json").read_text())
        for f in out.glob(f"{host}-*"):
            result[host][f.name.removeprefix(f"{host}-")] = f.read_text()
    return result


def argpairs(argv: list[str]) -> dict[str, str]:
    return {a: b for a, b in itertools.pairwise(argv) if a.startswith("--")}


def test_native_ray_backend_renders_the_seed_command_lines(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        multinode_runtime="native",
        multinode_venv="/opt/v",
        multinode_api_key="sk-secret-1",
        multinode_model="/models/llama",
        multinode_served_model_name="llama",
        vllm_serve_enforce_eager=True,
        vllm_serve_dtype="float16",
        vllm_serve_max_model_len=8192,
        vllm_serve_max_num_batched_tokens=65536,
        vllm_serve_extra_args=["--enable-chunked-prefill=False"],
    )
    head, worker = r["node1"], r["node2"]
    assert head["head_argv"][0] == "/opt/v/bin/ray"
    assert head["head_args"][:3] == ["start", "--head", "--block"]
    assert f"--node-ip-address={HEAD}" in head["head_args"]
    assert "--num-gpus=8" in head["head_args"] and "--dashboard-host=127.0.0.1" in head["head_args"]
    assert f"--address={HEAD}:6379" in worker["worker_args"]
    assert f"--node-ip-address={WORKER}" in worker["worker_args"]
    # seed 000: TP 8 x PP 2 over Ray, float16, eager, 8192, 65536, chunked prefill off
    v = head["vllm_args"]
    assert v[:2] == ["serve", "/models/llama"]
    p = argpairs(v)
    assert p["--tensor-parallel-size"] == "8" and p["--pipeline-parallel-size"] == "2"
    assert p["--distributed-executor-backend"] == "ray"
    assert p["--dtype"] == "float16" and p["--max-model-len"] == "8192"
    assert p["--max-num-batched-tokens"] == "65536" and p["--served-model-name"] == "llama"
    assert "--enforce-eager" in v and v[-1] == "--enable-chunked-prefill=False"
    assert "--max-num-seqs" not in v and "--nnodes" not in v and "--trust-remote-code" not in v
    assert "--enable-expert-parallel" not in v  # off by default
    assert head["runs_here"] is True and worker["runs_here"] is False
    assert head["node_ips"] == [HEAD, WORKER] and head["expected_gpus"] == 16
    # Ray token auth: the client gets the mode and the token file's path, never the token
    assert head["ray_python"] == [
        "env",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH=/etc/multinode-vllm/ray-auth-token",
        "/opt/v/bin/python",
    ]
    # the key is in the 0600 env file only, never on a command line
    assert not any("sk-secret-1" in a for a in v)
    assert "sk-secret-1" not in head["vllm.service"]
    assert 'VLLM_API_KEY="sk-secret-1"' in head["vllm.env"]
    assert f'RAY_ADDRESS="{HEAD}:6379"' in head["vllm.env"] and f'VLLM_HOST_IP="{HEAD}"' in head["vllm.env"]
    assert 'NCCL_SOCKET_IFNAME="bond0"' in head["vllm.env"] and "NCCL_IB_HCA" not in head["vllm.env"]
    # the unit's ExecStart is the argv, quoted; systemd's Ray settings from the test-bed recipe
    unit = head["ray-head.service"]
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert shlex.split(exec_line.removeprefix("ExecStart=")) == head["head_argv"]
    for line in ("KillMode=mixed", "SuccessExitStatus=1", "Restart=always", "TimeoutStopSec=15"):
        assert line in unit.splitlines()
    assert "EnvironmentFile=/etc/multinode-vllm/ray-head.env" in unit
    vexec = next(line for line in head["vllm.service"].splitlines() if line.startswith("ExecStart="))
    assert shlex.split(vexec.removeprefix("ExecStart=")) == ["/opt/v/bin/vllm", *v]
    wexec = next(line for line in worker["ray-worker.service"].splitlines() if line.startswith("ExecStart="))
    assert shlex.split(wexec.removeprefix("ExecStart=")) == ["/opt/v/bin/ray", *worker["worker_args"]]


def test_mp_backend_runs_on_every_node_with_ranks_and_headless_workers(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        multinode_runtime="native",
        multinode_backend="mp",
        vllm_serve_tensor_parallel_size=8,
        vllm_serve_enable_expert_parallel=True,
    )
    head, worker = argpairs(r["node1"]["vllm_args"]), argpairs(r["node2"]["vllm_args"])
    # the expert-parallel switch reaches every node's vllm serve
    assert all("--enable-expert-parallel" in r[h]["vllm_args"] for h in ("node1", "node2"))
    assert head["--nnodes"] == "2" and head["--node-rank"] == "0" and head["--master-addr"] == HEAD
    assert worker["--node-rank"] == "1" and worker["--master-addr"] == HEAD
    assert head["--distributed-executor-backend"] == "mp"
    assert "--headless" in r["node2"]["vllm_args"] and "--headless" not in r["node1"]["vllm_args"]
    assert r["node1"]["runs_here"] is True and r["node2"]["runs_here"] is True
    assert "RAY_ADDRESS" not in r["node1"]["vllm_env"]


def test_docker_runtime_keeps_secrets_out_of_env_and_argv(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        ib=True,
        multinode_runtime="docker",
        multinode_api_key="sk-it's",
        multinode_hf_token="hf_abc",
        multinode_node_env={"NCCL_DEBUG": "INFO", "NCCL_IB_GID_INDEX": 3},
    )
    head = r["node1"]
    # container env: network + HF_HOME + RAY_ADDRESS, all strings, no secret
    env = head["docker_env"]
    assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_IB_GID_INDEX"] == "3" and env["VLLM_HOST_IP"] == HEAD
    assert "HF_TOKEN" not in env and "VLLM_API_KEY" not in env
    assert head["docker_devices"] == ["/dev/infiniband:/dev/infiniband"]
    assert "/var/tmp/multinode-vllm/ray/tmp:/tmp/ray" in head["docker_volumes"]
    assert "/etc/multinode-vllm/vllm.env:/run/multinode-vllm/secrets.env:ro" in head["docker_volumes"]
    assert head["ray_python"] == ["docker", "exec", "ray-head", "python3"]
    assert r["node2"]["ray_python"] == ["docker", "exec", "ray-worker", "python3"]
    # the secrets file is sourced by /bin/sh: shell quoting must survive a quote in the key
    secrets = head["vllm.env"]
    assert "HF_TOKEN=hf_abc" in secrets
    proc = subprocess.run(
        ["/bin/sh", "-c", f'set -a; . {tmp_path}/out/node1-vllm.env; printf %s "$VLLM_API_KEY"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "sk-it's"
    # the entrypoint sources it then execs the real command with its arguments
    ep = head["entrypoint"]
    proc = subprocess.run(
        [
            "/bin/sh",
            "-c",
            ep.replace("/run/multinode-vllm/secrets.env", f"{tmp_path}/out/node1-vllm.env"),
            "/bin/sh",
            "-c",
            'printf "%s|%s" "$VLLM_API_KEY" "$0"',
            "arg0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "sk-it's|arg0"
    assert r["node1"]["endpoint_host"] == "192.0.2.11"


def test_model_revision_and_load_strategy_reach_vllm_serve(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        multinode_runtime="native",
        multinode_model="meta-llama/Llama-3.1-8B-Instruct",
        multinode_model_revision="0e9e39f249a16976918f6564b8830bc894c89659",
        multinode_model_load_strategy="eager",
    )
    args = argpairs(r["node1"]["vllm_args"])
    assert args["--revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert args["--safetensors-load-strategy"] == "eager"
    # a local path has no revision; no strategy: vLLM's default
    (tmp_path / "b").mkdir()
    r = render(tmp_path / "b", multinode_runtime="native", multinode_model="/models/llama")
    assert "--revision" not in r["node1"]["vllm_args"]
    assert "--safetensors-load-strategy" not in r["node1"]["vllm_args"]


BENCH_URL_PLAYBOOK = """\
- hosts: node1
  gather_facts: false
  connection: local
  vars_files:
{vars_files}
  tasks:
    - ansible.builtin.copy:
        content: "{{{{ _vllm_bench_base_url }}}}"
        dest: "{out}"
      delegate_to: localhost
"""


@pytest.mark.parametrize(("port", "url"), [(None, "http://127.0.0.1:8000"), (8123, "http://127.0.0.1:8123")])
def test_the_bench_phase_calls_the_port_the_serve_phase_serves_on(tmp_path: Path, port: int | None, url: str) -> None:
    """vllm_bench_port follows multinode_vllm_port (one source for the endpoint), 8000 when unset."""
    hostvars: dict[str, Any] = {"ansible_python_interpreter": sys.executable}
    if port is not None:
        hostvars["multinode_vllm_port"] = port
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"node1": hostvars}}}))
    out = tmp_path / "url.txt"
    (tmp_path / "pb.yml").write_text(BENCH_URL_PLAYBOOK.format(vars_files=role_vars_files("vllm_bench"), out=out))
    proc = ansible_playbook("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml"), timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.read_text() == url
