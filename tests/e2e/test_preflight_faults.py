"""validate + preflight over real SSH on the simulated cluster, healthy and with injected faults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from multinode_vllm import testbed as tb
from multinode_vllm.testbed import fake_nvml

pytestmark = pytest.mark.e2e

Run = Callable[..., CompletedProcess[str]]


@pytest.fixture
def bed(testbed: tb.Testbed, node_venv: Path) -> Iterator[tb.Testbed]:
    healthy = tb.get_nvml(testbed.name, 2)
    yield testbed
    tb.set_nvml(testbed.name, 2, healthy)


def preflight(run_ansible: Run, bed: tb.Testbed) -> CompletedProcess[str]:
    return run_ansible(
        "ansible-playbook", "-i", str(bed.inventory), "playbooks/validate.yml", "playbooks/preflight.yml"
    )


def test_preflight_passes(run_ansible: Run, bed: tb.Testbed) -> None:
    proc = preflight(run_ansible, bed)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "NVLinks 144/144" in proc.stdout
    assert "NCCL_SOCKET_IFNAME=bond0" in proc.stdout
    assert "node2: control bond0" in proc.stdout


def test_preflight_stops_on_a_down_nvlink(run_ansible: Run, bed: tb.Testbed) -> None:
    tb.set_nvml(bed.name, 2, fake_nvml.make_config(down_links={3: [5]}, seed="node2"))
    proc = preflight(run_ansible, bed)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "[node2]" in out
    assert "GPU 3" in out and "NVLink 5 is inactive" in out
    assert "Show the fabric of this node" not in out  # stopped before the summary: any_errors_fatal


def test_preflight_stops_on_driver_mismatch(run_ansible: Run, bed: tb.Testbed) -> None:
    tb.set_nvml(bed.name, 2, fake_nvml.make_config(driver_version="535.183.01", seed="node2"))
    proc = preflight(run_ansible, bed)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "NVIDIA driver versions differ" in out
    assert "node1=550.127.05" in out and "node2=535.183.01" in out
