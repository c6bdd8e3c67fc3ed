"""Inventory rendering of a test bed, read back by Ansible's own inventory parser (no podman)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from multinode_vllm.testbed import inventory as inv
from multinode_vllm.testbed.spec import TestbedSpec, plan_networks, plan_nodes


def _state(spec: TestbedSpec, key: str = "/var/tmp/k/id_ed25519") -> dict:
    nets = plan_networks(spec)
    return {
        "name": spec.name,
        "layout": spec.layout,
        "ssh_key": key,
        "networks": [asdict(n) for n in nets],
        "nodes": [asdict(n) for n in plan_nodes(spec, nets)],
    }


def _load(path: Path) -> tuple[InventoryManager, VariableManager]:
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(path)])
    return manager, VariableManager(loader=loader, inventory=manager)


def test_rendered_inventory_groups_and_connection_vars(tmp_path):
    spec = TestbedSpec(name="t", nodes=3, subnet_index=212)
    path = tmp_path / "hosts.yml"
    path.write_text(inv.render(_state(spec)))
    manager, variables = _load(path)
    groups = manager.get_groups_dict()
    assert groups["ray_head"] == ["node1"]
    assert groups["ray_workers"] == ["node2", "node3"]
    assert sorted(groups["vllm_cluster"]) == ["node1", "node2", "node3"]
    hv = variables.get_vars(host=manager.get_host("node3"))
    assert hv["ansible_host"] == "10.212.0.13"
    assert hv["ansible_user"] == "root"
    assert hv["ansible_ssh_private_key_file"] == "/var/tmp/k/id_ed25519"
    assert "StrictHostKeyChecking=no" in hv["ansible_ssh_common_args"]
    assert "UserKnownHostsFile=/dev/null" in hv["ansible_ssh_common_args"]
    assert hv["ansible_python_interpreter"] == "/usr/bin/python3"
    assert hv["testbed_ips"] == {"eth0": "10.212.0.13", "bond0": "10.212.1.13"}
    assert hv["testbed_layout"] == "bond0"


def test_single_node_has_an_empty_worker_group(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(inv.render(_state(TestbedSpec(name="solo", nodes=1, subnet_index=205))))
    manager, _ = _load(path)
    groups = manager.get_groups_dict()
    assert groups["ray_head"] == ["node1"]
    assert groups.get("ray_workers", []) == []


def test_droplet_inventory_lists_every_rail(tmp_path):
    spec = TestbedSpec(name="d", layout="droplet", rails=2, subnet_index=206)
    doc = yaml.safe_load(inv.render(_state(spec)))
    node1 = doc["all"]["children"]["vllm_cluster"]["children"]["ray_head"]["hosts"]["node1"]
    assert node1["testbed_ips"] == {
        "eth0": "10.206.0.11",
        "eth1": "10.206.1.11",
        "eth2": "10.206.2.11",
        "eth3": "10.206.3.11",
    }
    assert doc["all"]["children"]["vllm_cluster"]["vars"]["testbed_layout"] == "droplet"


def test_owner_marker(tmp_path):
    path = tmp_path / "hosts.yml"
    assert inv.owner(path) is None
    path.write_text(inv.render(_state(TestbedSpec(name="abc", subnet_index=207))))
    assert inv.owner(path) == "abc"
    path.write_text("all:\n  hosts: {}\n")
    assert inv.owner(path) is None


def test_private_inventory_sees_the_committed_group_vars(tmp_path):
    spec = TestbedSpec(name="p", subnet_index=208)
    inv_dir = inv.write_private(_state(spec), tmp_path / "inventory")
    assert (inv_dir / "group_vars").resolve() == (inv.LOCAL_INVENTORY_DIR / "group_vars").resolve()
    manager, variables = _load(inv_dir)
    hv = variables.get_vars(host=manager.get_host("node2"))
    # from inventories/local/group_vars/all/testbed.yml
    assert hv["preflight_ib_sysfs_root"] == "/opt/fake-sysfs"
    assert hv["ansible_host"] == "10.208.0.12"
    # rewriting is idempotent (the link is kept, not nested)
    inv.write_private(_state(spec), tmp_path / "inventory")
    assert not (inv_dir / "group_vars" / "group_vars").exists()


@pytest.mark.parametrize("name", ["mnv", "mnv-e2e"])
def test_committed_group_vars_hold_testbed_facts_only(name):
    text = (inv.LOCAL_INVENTORY_DIR / "group_vars" / "all" / "testbed.yml").read_text()
    data = yaml.safe_load(text)
    assert data["preflight_ib_sysfs_root"] == "/opt/fake-sysfs"
    assert data["reboot_boot_time_command"] == 'cut -d" " -f22 /proc/1/stat'
    assert name not in text  # nothing specific to one test bed is committed
