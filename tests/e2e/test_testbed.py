"""The simulated cluster itself: nodes boot, answer SSH/Ansible, are idempotent, go away cleanly."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from multinode_vllm import testbed as tb
from multinode_vllm.testbed import standins
from multinode_vllm.testbed.state import LABEL, state_dir

pytestmark = pytest.mark.e2e


def _podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def _labelled(name: str) -> tuple[list[str], list[str]]:
    cs = _podman("ps", "-a", "--filter", f"label={LABEL}={name}", "--format", "{{.Names}}").split()
    ns = _podman("network", "ls", "--filter", f"label={LABEL}={name}", "--format", "{{.Name}}").split()
    return cs, ns


def test_ansible_ping_over_ssh(testbed, run_ansible):
    proc = run_ansible("ansible", "all", "-i", str(testbed.inventory), "-m", "ansible.builtin.ping")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == 2
    assert proc.stdout.count("pong") == 2


def test_inventory_groups_match_the_nodes(testbed, run_ansible):
    proc = run_ansible("ansible-inventory", "-i", str(testbed.inventory), "--list")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ray_head"]["hosts"] == ["node1"]
    assert data["ray_workers"]["hosts"] == ["node2"]
    hv = data["_meta"]["hostvars"]
    assert hv["node2"]["ansible_host"] == testbed.node(2).mgmt_ip
    assert hv["node2"]["preflight_ib_sysfs_root"] == "/opt/fake-sysfs"  # committed group_vars


def test_up_twice_leaves_one_cluster(testbed):
    t0 = time.monotonic()
    again = tb.up(testbed.spec)
    assert again.already_up
    assert time.monotonic() - t0 < 15
    assert again.nodes == testbed.nodes
    cs, ns = _labelled(testbed.name)
    assert sorted(cs) == [f"{testbed.name}-node1", f"{testbed.name}-node2"]
    assert sorted(ns) == [f"{testbed.name}-fabric", f"{testbed.name}-mgmt"]


def test_up_with_other_parameters_is_refused(testbed):
    other = tb.TestbedSpec(name=testbed.name, nodes=3, local_inventory=False)
    with pytest.raises(tb.UsageError, match=r"nodes: running 2, asked 3.*testbed down --name mnv-e2e"):
        tb.up(other)
    cs, _ = _labelled(testbed.name)
    assert len(cs) == 2


def test_subnet_clash_is_detected_before_anything_is_created(testbed):
    clash = tb.TestbedSpec(name="mnv-e2e-clash", subnet_index=testbed.spec.resolved_index(), local_inventory=False)
    with pytest.raises(tb.UsageError) as err:
        tb.up(clash)
    msg = str(err.value)
    assert f"podman network '{testbed.name}-mgmt'" in msg
    assert "--subnet-index" in msg
    assert _labelled("mnv-e2e-clash") == ([], [])


def test_nodes_are_distinct_systemd_machines(testbed):
    ids, hostkeys = set(), set()
    for node in testbed.nodes:
        out = tb.exec(testbed.name, node.index, ["systemctl", "is-system-running", "--wait"], check=False)
        assert out.stdout.strip() == "running", out.stdout
        ids.add(tb.exec(testbed.name, node.index, ["cat", "/etc/machine-id"]).stdout.strip())
        hostkeys.add(tb.exec(testbed.name, node.index, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1])
        assert tb.exec(testbed.name, node.index, ["hostname"]).stdout.strip() == node.hostname
        shm = tb.exec(testbed.name, node.index, ["df", "-B1", "--output=size", "/dev/shm"]).stdout.split()[-1]
        assert int(shm) == 2 * 1024**3
    assert len(ids) == 2 and "" not in ids
    assert len(hostkeys) == 2


def test_one_default_route_via_eth0_and_fabric_between_nodes(testbed):
    routes = json.loads(tb.exec(testbed.name, 1, ["ip", "-j", "route", "show", "default"]).stdout)
    assert [r["dev"] for r in routes] == ["eth0"]
    addrs = json.loads(tb.exec(testbed.name, 1, ["ip", "-j", "-4", "addr", "show", "bond0"]).stdout)
    assert addrs[0]["addr_info"][0]["local"] == testbed.node(1).ips["bond0"]
    peer = testbed.node(2).ips["bond0"]
    out = tb.exec(testbed.name, 1, ["timeout", "3", "bash", "-c", f"</dev/tcp/{peer}/22 && echo open"], check=False)
    assert out.stdout.strip() == "open", out.stderr


def test_shared_dir_and_venvs_at_the_same_path(testbed, tmp_path):
    marker = testbed.shared_dir / f"marker-{time.time_ns()}"
    tb.exec(testbed.name, 1, ["sh", "-c", f"echo from-node1 > {marker}"])
    try:
        assert marker.read_text().strip() == "from-node1"
        assert tb.exec(testbed.name, 2, ["cat", str(marker)]).stdout.strip() == "from-node1"
    finally:
        marker.unlink()
    venvs = "/var/tmp/multinode-vllm/venvs"
    out = tb.exec(testbed.name, 2, ["touch", f"{venvs}/should-fail"], check=False)
    assert out.returncode != 0 and "Read-only" in out.stderr


def test_fake_nvml_is_installed_and_configurable(testbed):
    fake_nvml = pytest.importorskip("multinode_vllm.testbed.fake_nvml")
    ldcache = tb.exec(testbed.name, 2, ["ldconfig", "-p"]).stdout
    assert "libnvidia-ml.so.1" in ldcache and "/opt/fake-nvml/lib" in ldcache
    probe = (
        "import ctypes; lib = ctypes.CDLL('libnvidia-ml.so.1'); assert lib.nvmlInit_v2() == 0; "
        "n = ctypes.c_uint(); assert lib.nvmlDeviceGetCount_v2(ctypes.byref(n)) == 0; "
        "v = ctypes.create_string_buffer(80); assert lib.nvmlSystemGetDriverVersion(v, 80) == 0; "
        "print(n.value, v.value.decode())"
    )
    count, _driver = tb.exec(testbed.name, 2, ["python3", "-c", probe]).stdout.split()
    assert int(count) == testbed.spec.gpus_per_node
    original = tb.get_nvml(testbed.name, 2)
    try:
        tb.set_nvml(testbed.name, 2, fake_nvml.make_config(gpu_count=4, driver_version="535.999.01"))
        count, driver = tb.exec(testbed.name, 2, ["python3", "-c", probe]).stdout.split()
        assert (int(count), driver) == (4, "535.999.01")
        # node1 untouched
        count1, _ = tb.exec(testbed.name, 1, ["python3", "-c", probe]).stdout.split()
        assert int(count1) == testbed.spec.gpus_per_node
    finally:
        standins._node_file(testbed.name, 2, standins.NVML_CONFIG, json.dumps(original))


def test_fake_ib_tree_is_installed(testbed):
    pytest.importorskip("multinode_vllm.testbed.fake_ib")
    out = tb.exec(testbed.name, 1, ["ls", "/opt/fake-sysfs/class/infiniband"]).stdout.split()
    assert len(out) == 8
    state = tb.exec(testbed.name, 1, ["cat", f"/opt/fake-sysfs/class/infiniband/{out[0]}/ports/1/state"]).stdout
    assert "ACTIVE" in state


def test_status_reports_every_node_healthy(testbed):
    st = tb.status(testbed.name)
    assert st["healthy"]
    assert [(r["container"], r["state"], r["ssh"]) for r in st["nodes"]] == [
        (f"{testbed.name}-node1", "running", True),
        (f"{testbed.name}-node2", "running", True),
    ]
    assert st["nodes"][1]["ips"] == testbed.node(2).ips


def test_idle_nodes_use_little_memory(testbed):
    used = {}
    for node in testbed.nodes:
        cg = _podman("inspect", "--format", "{{.State.CgroupPath}}", node.container).strip()
        v1 = Path("/sys/fs/cgroup/memory") / cg.lstrip("/")
        if (v1 / "memory.stat").exists():
            stat = dict(line.split() for line in (v1 / "memory.stat").read_text().splitlines())
            used[node.hostname] = int(stat["total_rss"]) + int(stat.get("total_shmem", 0))
        else:
            used[node.hostname] = int((Path("/sys/fs/cgroup") / cg.lstrip("/") / "memory.current").read_text())
    print("idle memory per node (MB):", {k: round(v / 1e6, 1) for k, v in used.items()})
    assert all(0 < v < 150e6 for v in used.values()), used


def test_reboot_with_the_inventory_boot_time_command(testbed, run_ansible):
    before = tb.exec(testbed.name, 2, ["cut", "-d", " ", "-f22", "/proc/1/stat"]).stdout.strip()
    proc = run_ansible(
        "ansible",
        "node2",
        "-i",
        str(testbed.inventory),
        "-m",
        "ansible.builtin.reboot",
        "-a",
        "boot_time_command='{{ reboot_boot_time_command }}' reboot_timeout=120",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rebooted: true" in proc.stdout
    after = tb.exec(testbed.name, 2, ["cut", "-d", " ", "-f22", "/proc/1/stat"]).stdout.strip()
    assert after != before
    assert tb.status(testbed.name)["healthy"]


def test_droplet_layout_then_down_leaves_nothing():
    name = "mnv-e2e-drop"
    spec = tb.TestbedSpec(name=name, nodes=2, layout="droplet", rails=2, local_inventory=False)
    bed = tb.up(spec)
    ids: list[str] = []
    try:
        for node in bed.nodes:
            addrs = json.loads(tb.exec(name, node.index, ["ip", "-j", "-4", "addr"]).stdout)
            have = {a["ifname"]: a["addr_info"][0]["local"] for a in addrs if a["ifname"] != "lo"}
            assert have == node.ips
            assert set(have) == {"eth0", "eth1", "eth2", "eth3"}
            assert have["eth2"] == f"10.{spec.resolved_index()}.2.{10 + node.index}"
            routes = json.loads(tb.exec(name, node.index, ["ip", "-j", "route", "show", "default"]).stdout)
            assert [r["dev"] for r in routes] == ["eth0"]
            ids.append(_podman("inspect", "--format", "{{.Id}}", node.container).strip())
        peer = bed.node(2).ips["eth2"]
        out = tb.exec(name, 1, ["timeout", "3", "bash", "-c", f"</dev/tcp/{peer}/22 && echo open"], check=False)
        assert out.stdout.strip() == "open"
    finally:
        removed = tb.down(name, purge=True)
    assert len(removed["containers"]) == 2
    assert len(removed["networks"]) == 4
    assert _labelled(name) == ([], [])
    assert name not in _podman("ps", "-a", "--format", "{{.Names}}")
    assert name not in _podman("network", "ls", "--format", "{{.Name}}")
    mounts = Path("/proc/mounts").read_text()
    assert not [i for i in ids if i in mounts]
    assert not state_dir(name).exists()
    assert not Path(f"/srv/multinode-vllm/{name}").exists()
    assert tb.status(name)["exists"] is False
