"""validate + preflight with ansible-playbook on the simulated cluster (bond0 and droplet layouts).

The nodes run the real fabric_facts / gpu_facts / ib_facts over SSH; only the hardware is fake
(the fake NVML library and IB sysfs tree of the test bed). One node's fake NVML is changed to
report a down NVLink, then another driver version: preflight must stop naming node, GPU, link,
versions. The node's configuration is restored afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from multinode_vllm import testbed as tb
from multinode_vllm.testbed import fake_nvml

pytestmark = pytest.mark.e2e

RunAnsible = Callable[..., subprocess.CompletedProcess[str]]
DROPLET_NAME = "mnv-e2e-droplet"


def flat(proc: subprocess.CompletedProcess[str]) -> str:
    # the yaml callback folds long messages over lines: compare with whitespace collapsed
    return " ".join((proc.stdout + proc.stderr).split())


def validate_and_preflight(run_ansible: RunAnsible, inventory: Path) -> subprocess.CompletedProcess[str]:
    return run_ansible(
        "ansible-playbook", "-i", str(inventory), "playbooks/validate.yml", "playbooks/preflight.yml", timeout=300
    )


@pytest.fixture
def restore_node2_nvml(testbed: tb.Testbed) -> Iterator[None]:
    saved = tb.get_nvml(testbed.name, 2)
    try:
        yield
    finally:
        tb.set_nvml(testbed.name, 2, saved)


def test_validate_and_preflight_pass_on_bond0(testbed: tb.Testbed, run_ansible: RunAnsible) -> None:
    proc = validate_and_preflight(run_ansible, testbed.inventory)
    out = flat(proc)
    assert proc.returncode == 0, out[-4000:]
    for node in testbed.nodes:
        bond0 = node.ips["bond0"]
        assert f"{node.hostname}: control bond0 {bond0} in {bond0.rsplit('.', 1)[0]}.0/24 (layout bond0)" in out, out[
            -4000:
        ]
    assert out.count("NCCL_SOCKET_IFNAME=bond0") == len(testbed.nodes)
    assert out.count("8 x NVIDIA H100 80GB HBM3, driver 550.127.05") == len(testbed.nodes)
    assert out.count("NVLinks 144/144 active") == len(testbed.nodes)
    assert "TP 1 x PP 2 on 2 nodes" in out  # the validate phase's plan for the tiny model


def test_preflight_stops_on_a_down_nvlink(
    testbed: tb.Testbed, run_ansible: RunAnsible, restore_node2_nvml: None
) -> None:
    tb.set_nvml(testbed.name, 2, fake_nvml.make_config(gpu_count=8, down_links={3: [5]}, seed="node2"))
    proc = validate_and_preflight(run_ansible, testbed.inventory)
    out = flat(proc)
    assert proc.returncode == 2, out[-4000:]
    assert "Stop if an NVLink is down" in out
    assert "node2 GPU 3 (GPU-" in out and "NVLink 5 inactive, 17 of 18 active" in out, out[-4000:]
    assert "node1 GPU" not in out  # only the broken node is named


def test_preflight_stops_on_mismatched_drivers(
    testbed: tb.Testbed, run_ansible: RunAnsible, restore_node2_nvml: None
) -> None:
    tb.set_nvml(testbed.name, 2, fake_nvml.make_config(gpu_count=8, driver_version="535.183.01", seed="node2"))
    proc = validate_and_preflight(run_ansible, testbed.inventory)
    out = flat(proc)
    assert proc.returncode == 2, out[-4000:]
    assert "NVIDIA driver versions: node1 runs 550.127.05, node2 runs 535.183.01" in out, out[-4000:]


@pytest.fixture(scope="module")
def droplet_bed() -> Iterator[tb.Testbed]:
    bed = tb.up(tb.TestbedSpec(name=DROPLET_NAME, nodes=2, layout="droplet", rails=2, local_inventory=False))
    try:
        yield bed
    finally:
        tb.down(DROPLET_NAME)


def test_preflight_on_the_droplet_layout_uses_eth2(droplet_bed: tb.Testbed, run_ansible: RunAnsible) -> None:
    proc = validate_and_preflight(run_ansible, droplet_bed.inventory)
    out = flat(proc)
    assert proc.returncode == 0, out[-4000:]
    for node in droplet_bed.nodes:
        eth2 = node.ips["eth2"]
        assert f"{node.hostname}: control eth2 {eth2} in {eth2.rsplit('.', 1)[0]}.0/24 (layout droplet)" in out, out[
            -4000:
        ]
        assert node.ips["eth1"] not in out.split("PLAY [Preflight", 1)[1]  # never the VPC
