"""The prepare phase end to end on a simulated cluster of its own (test bed `mnv-prep`, 2 nodes).

There is no internet here: molecule/prepare/stubs.yml builds signed local apt repositories of stub
packages with the real names (cuda-keyring, cuda-drivers-550, nvidia-kernel-open-dkms,
nvidia-fabricmanager-550, nvidia-container-toolkit, docker-ce, ...) into the test bed's shared
directory, gives node1 a fake HGX PCI bus (4 NVSwitches) and node2 a PCIe one, and writes an
operator's daemon.json. Then, in order, through ansible-playbook:

1. check mode with --diff on the fresh nodes: no failure, nothing installed;
2. the first converge: packages, holds, services, daemon.json merged, the reboot (the driver
   changed; the stub DKMS package also asks for it), the driver read back through NVML, a
   container that sees the GPUs; fabric manager on node1 only;
3. the rerun: changed=0, no handler;
4. a driver version change with nvidia_driver_reboot=false: the handler skips the reboot;
5. the next run reboots (the node still asks for it) and finds the new driver;
6. its rerun: changed=0; 7. a node whose loaded driver is not the installed one stops the phase.

Each step's wall time is printed (pytest -s) and kept in STEP_SECONDS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_beds import RECAP

from multinode_vllm import testbed as tb
from multinode_vllm.testbed import fake_nvml

pytestmark = pytest.mark.e2e

NAME = "mnv-prep"
RunAnsible = Callable[..., subprocess.CompletedProcess[str]]
STEP_SECONDS: dict[str, float] = {}
ON = {"multinode_prepare": True}
NEW = "550.144.03"  # the second driver version of the stub repository
OLD = "550.127.05"  # the inventory's nvidia_driver_version, and the fake NVML's driver
DRIVER_PACKAGES = ("cuda-drivers-550", "nvidia-driver", "nvidia-kernel-open-dkms", "nvidia-smi", "nvidia-persistenced")
DOCKER_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools")


def recap(out: str) -> dict[str, dict[str, int]]:
    return {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in RECAP.findall(out)
    }


def flat(text: str) -> str:
    return " ".join(text.split())


class Story:
    """The ordered steps share the test bed; a failed step makes the later ones fail fast."""

    def __init__(self, bed: tb.Testbed, run_ansible: RunAnsible) -> None:
        self.bed = bed
        self._run = run_ansible
        self.failed = ""

    def playbook(self, step: str, *args: str, extra: dict[str, Any] | None = None) -> tuple[int, str]:
        if self.failed:
            pytest.fail(f"an earlier step failed: {self.failed}")
        ev = json.dumps({**ON, **(extra or {})})
        t0 = time.monotonic()
        proc = self._run(
            "ansible-playbook", "-i", str(self.bed.inventory), "playbooks/prepare.yml", "-e", ev, *args, timeout=900
        )
        STEP_SECONDS[step] = round(time.monotonic() - t0, 1)
        print(f"\n[prepare e2e] {step}: {STEP_SECONDS[step]} s, recap {recap(proc.stdout)}")
        return proc.returncode, proc.stdout + proc.stderr

    def sh(self, node: int, script: str) -> subprocess.CompletedProcess[str]:
        return self.bed.exec(node, ["sh", "-c", script], check=False)

    def boot_mark(self, node: int) -> str:
        # what the test inventory's reboot_boot_time_command reads: PID 1's start time
        return self.sh(node, "cut -d' ' -f22 /proc/1/stat").stdout.strip()

    def boot_marks(self) -> list[str]:
        return [self.boot_mark(n.index) for n in self.bed.nodes]

    def selections(self, node: int) -> dict[str, str]:
        out = self.sh(node, "dpkg --get-selections").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def version(self, node: int, package: str) -> str:
        proc = self.sh(node, f"dpkg-query -W -f '${{Status}} ${{Version}}' {package}")
        words = proc.stdout.split()
        return words[-1] if proc.returncode == 0 and "installed" in words else ""

    def has_reboot_request(self, node: int) -> bool:
        return self.sh(node, "test -e /var/run/reboot-required").returncode == 0

    def step_failed(self, why: str) -> None:
        self.failed = why


@pytest.fixture(scope="module")
def story(run_ansible: RunAnsible) -> Iterator[Story]:
    tb.down(NAME)  # fresh nodes: check mode and the first converge start from bare Debian 12
    bed = tb.up(tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", local_inventory=False))
    try:
        proc = run_ansible("ansible-playbook", "-i", str(bed.inventory), "molecule/prepare/stubs.yml", timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        yield Story(bed, run_ansible)
    finally:
        print(f"\n[prepare e2e] step seconds: {STEP_SECONDS}")
        if not os.environ.get("MNV_E2E_KEEP"):
            tb.down(NAME)


def guard(story: Story, step: str, ok: bool, out: str) -> None:
    if not ok:
        story.step_failed(step)
    assert ok, out[-5000:]


def test_check_mode_with_diff_on_fresh_nodes(story: Story) -> None:
    daemon_before = story.sh(1, "cat /etc/docker/daemon.json").stdout
    rc, out = story.playbook("check mode --diff (fresh nodes)", "--check", "--diff")
    r = recap(out)
    guard(story, "check mode", rc == 0 and set(r) == {"node1", "node2"}, out)
    assert all(h["failed"] == 0 and h["unreachable"] == 0 and h["changed"] > 0 for h in r.values()), r
    # the diffs a reviewer reads: the merged daemon.json, Docker's source, the persistence drop-in
    assert '+    "log-driver": "json-file",' in out and '+        "max-size": "100m"' in out, out[-4000:]
    assert "+URIs: file:///srv/multinode-vllm/mnv-prep/apt/docker" in out
    assert "+ExecStart=/usr/bin/nvidia-persistenced --verbose" in out
    # (the yaml callback doubles the apostrophe of NVIDIA's: match the words after it)
    assert flat(out).count("CUDA repository is not configured on node") == 2
    # nothing was installed or written
    for node in (1, 2):
        assert story.version(node, "cuda-drivers-550") == ""
        assert story.version(node, "docker-ce") == ""
    assert story.sh(1, "cat /etc/docker/daemon.json").stdout == daemon_before


def test_first_converge_installs_reboots_and_checks(story: Story) -> None:
    before = story.boot_marks()
    rc, out = story.playbook("first converge")
    r = recap(out)
    guard(story, "first converge", rc == 0 and all(h["failed"] == 0 for h in r.values()) and len(r) == 2, out)
    after = story.boot_marks()
    assert all(b != a for b, a in zip(before, after, strict=True)), f"no reboot: PID 1 start {before} -> {after}"
    text = flat(out)
    for node in ("node1", "node2"):
        assert re.search(rf"{node} is back after a \d+ s reboot and runs driver {OLD}, 8 GPUs", text), text[-3000:]
        assert f"{node}: a container with --gpus all sees 8 GPUs" in text
    for n in (1, 2):
        assert not story.has_reboot_request(n)  # /run is a tmpfs: only a reboot clears it
        held = story.selections(n)
        for pkg in DRIVER_PACKAGES:
            assert story.version(n, pkg) == f"{OLD}-1", (n, pkg)
            assert held.get(pkg) == "hold", (n, pkg, held)
        for pkg in DOCKER_PACKAGES + TOOLKIT_PACKAGES:
            assert story.version(n, pkg), (n, pkg)
            assert held.get(pkg) == "install", (n, pkg)  # only the driver is held
        assert story.version(n, "nvidia-container-toolkit") == "1.17.8-1"
        units = story.sh(
            n, "systemctl is-enabled nvidia-persistenced docker; systemctl is-active nvidia-persistenced docker"
        )
        assert units.stdout.split() == ["enabled", "enabled", "active", "active"], units.stdout
        assert story.sh(n, "cat /run/nvidia-persistenced/args").stdout.strip() == "--verbose"
        daemon = json.loads(story.sh(n, "cat /etc/docker/daemon.json").stdout)
        assert daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
        assert daemon["log-driver"] == "json-file"
        assert daemon["log-opts"] == {"max-file": "3", "max-size": "100m"}  # the operator's key kept
        assert daemon["registry-mirrors"] == ["https://mirror.example.invalid"]
        loaded = json.loads(story.sh(n, "cat /run/docker-stub/daemon.json").stdout)
        assert loaded == daemon  # docker restarted after the last change
    # fabric manager: node1 (NVSwitches on its PCI bus) has it running, node2 (PCIe) has none
    assert story.version(1, "nvidia-fabricmanager-550") == f"{OLD}-1"
    assert story.selections(1).get("nvidia-fabricmanager-550") == "hold"
    fm = story.sh(1, "systemctl is-enabled nvidia-fabricmanager; systemctl is-active nvidia-fabricmanager")
    assert fm.stdout.split() == ["enabled", "active"], fm.stdout
    assert story.version(2, "nvidia-fabricmanager-550") == ""
    assert story.sh(2, "test -e /lib/systemd/system/nvidia-fabricmanager.service").returncode == 1
    assert "nvidia-fabricmanager" not in story.sh(2, "systemctl list-unit-files").stdout


def test_rerun_changes_nothing_and_runs_no_handler(story: Story) -> None:
    before = story.boot_marks()
    rc, out = story.playbook("rerun")
    r = recap(out)
    guard(story, "rerun", rc == 0 and len(r) == 2, out)
    assert all(h["changed"] == 0 and h["failed"] == 0 for h in r.values()), r
    assert "RUNNING HANDLER" not in out
    assert story.boot_marks() == before


def test_driver_change_with_reboot_switched_off(story: Story) -> None:
    before = story.boot_marks()
    rc, out = story.playbook(
        "driver change, reboot off", extra={"nvidia_driver_version": NEW, "nvidia_driver_reboot": False}
    )
    r = recap(out)
    guard(story, "reboot off", rc == 0 and all(h["failed"] == 0 and h["changed"] > 0 for h in r.values()), out)
    text = flat(out)
    for node in ("node1", "node2"):
        assert f"{node} needs a reboot for the NVIDIA driver, skipped (nvidia_driver_reboot=false)" in text
    assert "RUNNING HANDLER [multinode.vllm.nvidia_driver : Reboot the node and wait until it is back]" in out
    assert story.boot_marks() == before, "the node rebooted although nvidia_driver_reboot=false"
    for n in (1, 2):
        assert story.has_reboot_request(n)
        assert story.version(n, "cuda-drivers-550") == f"{NEW}-1"
        assert story.selections(n)["cuda-drivers-550"] == "hold"


def test_next_run_reboots_into_the_new_driver(story: Story) -> None:
    # what the node's NVML would report once the new module is loaded
    for n in (1, 2):
        tb.set_nvml(NAME, n, fake_nvml.make_config(gpu_count=8, driver_version=NEW, seed=f"node{n}"))
    before = story.boot_marks()
    rc, out = story.playbook("pending reboot done", extra={"nvidia_driver_version": NEW})
    r = recap(out)
    guard(story, "pending reboot", rc == 0 and all(h["failed"] == 0 for h in r.values()), out)
    after = story.boot_marks()
    assert all(b != a for b, a in zip(before, after, strict=True)), f"no reboot: {before} -> {after}"
    text = flat(out)
    assert text.count("/var/run/reboot-required exists on node") == 2
    for node in ("node1", "node2"):
        assert re.search(rf"{node} is back after a \d+ s reboot and runs driver {NEW}, 8 GPUs", text), text[-3000:]
    assert not any(story.has_reboot_request(n) for n in (1, 2))


def test_rerun_after_the_change_changes_nothing(story: Story) -> None:
    rc, out = story.playbook("rerun after the change", extra={"nvidia_driver_version": NEW})
    r = recap(out)
    guard(story, "rerun 2", rc == 0 and len(r) == 2, out)
    assert all(h["changed"] == 0 for h in r.values()), r
    assert "RUNNING HANDLER" not in out


def test_a_node_running_another_driver_stops_the_phase(story: Story) -> None:
    saved = tb.get_nvml(NAME, 2)
    tb.set_nvml(NAME, 2, fake_nvml.make_config(gpu_count=8, driver_version=OLD, seed="node2"))
    try:
        rc, out = story.playbook("wrong driver loaded", extra={"nvidia_driver_version": NEW})
    finally:
        tb.set_nvml(NAME, 2, saved)
    text = flat(out)
    assert rc == 2, text[-3000:]
    assert f"NVIDIA driver {OLD} is installed, expected {NEW}" in text, text[-3000:]
    assert recap(out)["node2"]["failed"] == 1


def test_step_times_were_recorded(story: Story) -> None:
    assert not story.failed, story.failed
    assert len(STEP_SECONDS) == 7, STEP_SECONDS
    Path(os.environ.get("MNV_PREP_TIMES", "/tmp/mnv-prep-e2e-times.json")).write_text(json.dumps(STEP_SECONDS))
