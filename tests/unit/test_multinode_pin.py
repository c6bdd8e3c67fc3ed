"""The multinode set-up pins the values read across the hosts once per run (roles/multinode/tasks/
pin.yml): the head's and every node's address, every node's fabric and the GPUs the group announces.
Where a node has no fabric facts (it did not answer: the status play goes on without it), nothing is
pinned and the values are read per use, as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import FAKE_FACTS_MODULE, ansible_playbook, local_cluster_inventory, role_vars_files

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)

PLAYBOOK = """\
- name: Pin
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Set the preflight facts (node3 answers with none)
      fake_facts:
        facts: "{{{{ node_facts }}}}"
    - name: Note the GPUs this node announces to Ray
      ansible.builtin.set_fact:
        multinode_node_gpus: "{{{{ multinode_ray_num_gpus | int }}}}"
    - name: Pin
      ansible.builtin.include_role:
        name: multinode.vllm.multinode
        tasks_from: pin
    - name: Write what the roles read
      ansible.builtin.copy:
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0644"
        content: "{{{{ seen | to_json }}}}"
      vars:
        seen:
          pinned: "{{{{ _multinode_pinned | default(None) }}}}"
          head_ip: "{{{{ _multinode_head_ip }}}}"
          ray_address: "{{{{ _multinode_ray_address }}}}"
          expected_gpus: "{{{{ _multinode_expected_gpus | int }}}}"
          fabric_hosts: "{{{{ _multinode_fabrics | list }}}}"
"""


def run(tmp_path: Path, third_has_facts: bool) -> dict[str, Any]:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    out = tmp_path / "out"
    out.mkdir()

    def fabric(ip: str, gpus: int) -> dict[str, Any]:
        return {"multinode_fabric": {"control_ip": ip, "control_interface": "bond0"}, "multinode_gpu": {"count": gpus}}

    hosts = {
        "node1": {"node_facts": fabric("10.0.1.11", 8)},
        "node2": {"node_facts": fabric("10.0.1.12", 8)},
        "node3": {"node_facts": fabric("10.0.1.13", 4) if third_has_facts else {}},
    }
    inv = local_cluster_inventory({"node1": hosts["node1"]}, {h: hosts[h] for h in ("node2", "node3")})
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(PLAYBOOK.format(out=out, vars_files=role_vars_files("multinode")))
    proc = ansible_playbook(
        "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml"), timeout=120, ANSIBLE_LIBRARY=str(lib)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {h: json.loads((out / f"{h}.json").read_text()) for h in hosts}


def test_every_node_reads_the_values_pinned_once(tmp_path: Path) -> None:
    seen = run(tmp_path, third_has_facts=True)
    for host in ("node1", "node2", "node3"):
        pinned = seen[host]["pinned"]
        # set once (run_once) and given to every host of the play
        assert pinned == seen["node1"]["pinned"]
        assert pinned["head_ip"] == "10.0.1.11"
        assert pinned["node_ips"] == ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
        assert pinned["expected_gpus"] == 20
        assert sorted(pinned["fabrics"]) == ["node1", "node2", "node3"]
        assert pinned["fabrics"]["node3"]["control_ip"] == "10.0.1.13"
        assert seen[host]["ray_address"] == "10.0.1.11:6379" and seen[host]["expected_gpus"] == 20


@pytest.mark.parametrize("host", ["node1", "node2", "node3"])
def test_a_node_without_fabric_facts_leaves_the_values_unpinned(tmp_path: Path, host: str) -> None:
    seen = run(tmp_path, third_has_facts=False)[host]
    assert seen["pinned"] is None
    # read per use, as before the pin: the head's address, the GPUs (node3 without facts counts 0)
    assert seen["head_ip"] == "10.0.1.11" and seen["expected_gpus"] == 16
    assert seen["fabric_hosts"] == ["node1", "node2", "node3"]
