"""vllm_serve recovery: vLLM is restarted when one of its members started after it.

Runs the role's real vars (roles/vllm_serve/vars/main.yml) through ansible-playbook on two local
hosts, with the `systemctl show` / `docker inspect` outputs that starts.yml registers given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import ansible_playbook, role_vars_files

PLAYBOOK = """\
- name: Decide
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Note the start times
      ansible.builtin.set_fact:
        vllm_serve_started_at: "{{{{ _vllm_serve_started_at }}}}"
    - name: Decide
      ansible.builtin.set_fact:
        vllm_serve_stale_members: "{{{{ _vllm_serve_stale_members }}}}"
      when: _vllm_serve_runs_here | bool
    - name: Write
      ansible.builtin.copy:
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0644"
        content: "{{{{ {{'units': _vllm_serve_member_units, 'started': vllm_serve_started_at,
                      'stale': vllm_serve_stale_members | default(none)}} | to_json }}}}"
"""


def systemd(*units: tuple[str, str, int]) -> dict[str, Any]:
    """`systemctl show` results: (unit, ActiveState, epoch seconds or 0 for never)."""
    return {
        "results": [
            {"item": u, "stdout_lines": [f"ActiveState={state}", f"ActiveEnterTimestamp={'@' + str(t) if t else ''}"]}
            for u, state, t in units
        ]
    }


def docker(*containers: tuple[str, str]) -> dict[str, Any]:
    return {"results": [{"item": c, "stdout": out} for c, out in containers]}


def decide(tmp_path: Path, node1: dict[str, Any], node2: dict[str, Any], **extra: Any) -> dict[str, Any]:
    inv = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {
                "vllm_cluster": {
                    "children": {
                        "ray_head": {"hosts": {"node1": node1}},
                        "ray_workers": {"hosts": {"node2": node2}},
                    }
                }
            },
        }
    }
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(PLAYBOOK.format(out=out, vars_files=role_vars_files("multinode", "vllm_serve")))
    proc = ansible_playbook("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml"), "-e", json.dumps(extra))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {h: json.loads((out / f"{h}.json").read_text()) for h in ("node1", "node2")}


T0 = 1_796_022_000  # vLLM on the head started here


@pytest.mark.parametrize(
    ("worker_ray", "head_ray", "vllm", "stale"),
    [
        # systemd restarted the worker's Ray after vLLM started: the trap
        (("active", T0 + 30), ("active", T0 - 60), ("active", T0), ["node2 ray-worker"]),
        # the usual order: Ray, then vLLM
        (("active", T0 - 20), ("active", T0 - 60), ("active", T0), []),
        # the head's Ray restarted after vLLM (node1 rebooted and Ray came back first)
        (("active", T0 - 20), ("active", T0 + 5), ("active", T0), ["node1 ray-head"]),
        # the worker's Ray is down: not stale here (the cluster phase restarts the group in order)
        (("failed", T0 + 30), ("active", T0 - 60), ("active", T0), []),
        # vLLM not running: nothing to compare with (the health probe restarts it)
        (("active", T0 + 30), ("active", T0 - 60), ("inactive", T0), []),
        # never started
        (("active", T0 + 30), ("active", T0 - 60), ("inactive", 0), []),
    ],
)
def test_native_ray_backend(
    tmp_path: Path, worker_ray: tuple[str, int], head_ray: tuple[str, int], vllm: tuple[str, int], stale: list[str]
) -> None:
    r = decide(
        tmp_path,
        {"vllm_serve_unit_starts": systemd(("ray-head", *head_ray), ("vllm", *vllm))},
        {"vllm_serve_unit_starts": systemd(("ray-worker", *worker_ray))},
        multinode_runtime="native",
    )
    assert r["node1"]["units"] == ["ray-head", "vllm"]
    assert r["node2"]["units"] == ["ray-worker"]
    assert r["node1"]["stale"] == stale
    assert r["node2"]["stale"] is None  # vLLM does not run on the worker with the ray backend


@pytest.mark.parametrize(("worker_start", "stale"), [(T0 + 3, ["node2 vllm"]), (T0 - 3, []), (T0, [])])
def test_mp_backend_headless_worker_restarted(tmp_path: Path, worker_start: int, stale: list[str]) -> None:
    r = decide(
        tmp_path,
        {"vllm_serve_unit_starts": systemd(("vllm", "active", T0))},
        {"vllm_serve_unit_starts": systemd(("vllm", "active", worker_start))},
        multinode_runtime="native",
        multinode_backend="mp",
    )
    assert r["node1"]["units"] == r["node2"]["units"] == ["vllm"]
    # both nodes run vLLM with mp and both restart
    assert r["node1"]["stale"] == r["node2"]["stale"] == stale


def test_docker_runtime_reads_container_start_times(tmp_path: Path) -> None:
    r = decide(
        tmp_path,
        {
            "vllm_serve_container_starts": docker(
                ("ray-head", "true 2026-11-30T07:00:00.5Z"), ("vllm", "true 2026-11-30T07:01:00.123456789Z")
            )
        },
        {"vllm_serve_container_starts": docker(("ray-worker", "true 2026-11-30T07:05:09.1Z"))},
        multinode_runtime="docker",
    )
    assert r["node1"]["started"] == {"ray-head": 1796022000, "vllm": 1796022060}
    assert r["node2"]["started"] == {"ray-worker": 1796022309}
    assert r["node1"]["stale"] == ["node2 ray-worker"]


def test_docker_runtime_ignores_stopped_or_missing_containers(tmp_path: Path) -> None:
    r = decide(
        tmp_path,
        {"vllm_serve_container_starts": docker(("ray-head", "true 2026-11-30T07:00:00Z"), ("vllm", ""))},
        {"vllm_serve_container_starts": docker(("ray-worker", "false 2026-11-30T07:05:09Z"))},
        multinode_runtime="docker",
    )
    assert r["node1"]["started"] == {"ray-head": 1796022000, "vllm": 0}
    assert r["node2"]["started"] == {"ray-worker": 0}
    assert r["node1"]["stale"] == []
