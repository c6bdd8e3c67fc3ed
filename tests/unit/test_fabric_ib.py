"""fabric_facts and ib_facts: parsers on realistic fixtures, failures, and main() for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.multinode.vllm.plugins.module_utils._fabric import (
    FabricError,
    default_route_interface,
    parse_ip_addr,
    select_fabric,
)
from ansible_collections.multinode.vllm.plugins.module_utils._ib import IbError, read_hcas, summarize
from ansible_collections.multinode.vllm.plugins.modules import fabric_facts, ib_facts

from multinode_vllm.testbed.fake_ib import write_tree

ROOT = Path(__file__).resolve().parents[2]


def link(name: str, ip: str | None = None, prefix: int = 24, up: bool = True, **extra: Any) -> dict[str, Any]:
    addr = [{"family": "inet", "local": ip, "prefixlen": prefix, "scope": "global"}] if ip else []
    return {
        "ifindex": abs(hash(name)) % 1000,
        "ifname": name,
        "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"] if up else ["BROADCAST", "MULTICAST"],
        "mtu": 9000 if name.startswith(("bond", "eth2")) else 1500,
        "operstate": "UP" if up else "DOWN",
        "addr_info": [*addr, {"family": "inet6", "local": "fe80::1", "prefixlen": 64}],
        **extra,
    }


LO = {
    "ifindex": 1,
    "ifname": "lo",
    "flags": ["LOOPBACK", "UP"],
    "mtu": 65536,
    "operstate": "UNKNOWN",
    "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
}
BAREMETAL = [
    LO,
    link("eno1", "203.0.113.10"),
    link("enp1s0f0", master="bond0"),
    link("enp1s0f1", master="bond0"),
    link("bond0", "10.10.0.11"),
    link("docker0", "172.17.0.1", 16, up=False),
]
DROPLET = [LO, link("eth0", "203.0.113.20"), link("eth1", "10.124.0.5", 20)] + [
    link(f"eth{i}", f"192.168.{i}.5") for i in range(2, 10)
]
PLAIN = [LO, link("ens3", "192.0.2.7")]
DEFAULT = [{"dst": "default", "gateway": "203.0.113.1", "dev": "eth0", "metric": 100}]


def choose(links: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return select_fabric(parse_ip_addr(links), default_route_interface(routes or DEFAULT), **kw)


def test_baremetal_bond0() -> None:
    f = choose(BAREMETAL, [{"dst": "default", "dev": "eno1"}])
    assert (f["layout"], f["control_interface"], f["control_ip"]) == ("bond0", "bond0", "10.10.0.11")
    assert f["control_subnet"] == "10.10.0.0/24"
    assert f["nccl_socket_ifname"] == "bond0" and f["gloo_socket_ifname"] == "bond0"
    assert f["interfaces"]["enp1s0f0"]["master"] == "bond0"


def test_droplet_eth2_and_rails() -> None:
    f = choose(DROPLET)
    assert (f["layout"], f["control_interface"], f["control_ip"]) == ("droplet", "eth2", "192.168.2.5")
    assert f["nccl_socket_ifname"] == "eth2,eth3,eth4,eth5,eth6,eth7,eth8,eth9"
    assert "eth0" not in f["data_interfaces"]


def test_droplet_vpc_only_when_asked() -> None:
    f = choose(DROPLET, prefer_vpc=True)
    assert (f["control_interface"], f["control_ip"], f["control_subnet"]) == (
        "eth1",
        "10.124.0.5",
        "10.124.0.0/20",
    )
    assert f["data_interfaces"][0] == "eth2"


def test_default_route_fallback() -> None:
    f = choose(PLAIN, [{"dst": "default", "dev": "ens3", "metric": 0}])
    assert (f["layout"], f["control_interface"]) == ("default_route", "ens3")


def test_explicit_wins() -> None:
    f = choose(BAREMETAL, control_interface="eno1", data_interfaces=["bond0"])
    assert (f["layout"], f["control_ip"], f["nccl_socket_ifname"]) == ("explicit", "203.0.113.10", "bond0")


@pytest.mark.parametrize(
    ("links", "kw", "fragment"),
    [
        (
            PLAIN,
            {"control_interface": "bond0"},
            "interface bond0 does not exist on this host (present: ens3)",
        ),
        ([LO, link("bond0", "10.10.0.11", up=False)], {}, "interface bond0 is down"),
        ([LO, link("bond0")], {}, "interface bond0 has no IPv4 address"),
        (BAREMETAL, {"control_ip": "10.9.9.9"}, "control_ip 10.9.9.9 is not on bond0"),
    ],
)
def test_fabric_failures_name_interface_and_variable(
    links: list[dict[str, Any]], kw: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(FabricError) as err:
        choose(links, **kw)
    assert fragment in str(err.value)
    assert "control_i" in str(err.value)  # the option to set: control_interface or control_ip


def run_module(module: Any, args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def fake_ip(tmp_path: Path, links: list[dict[str, Any]], routes: list[dict[str, Any]]) -> str:
    (tmp_path / "addr.json").write_text(json.dumps(links))
    (tmp_path / "route.json").write_text(json.dumps(routes))
    script = tmp_path / "ip"
    script.write_text(f'#!/bin/sh\n[ "$2" = route ] && exec cat {tmp_path}/route.json\nexec cat {tmp_path}/addr.json\n')
    script.chmod(0o755)
    return str(script)


def test_fabric_main_droplet_with_speed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speed = tmp_path / "sys" / "class" / "net" / "eth2" / "speed"
    speed.parent.mkdir(parents=True)
    speed.write_text("100000\n")
    out = run_module(
        fabric_facts,
        {
            "ip_binary": fake_ip(tmp_path, DROPLET, DEFAULT),
            "sysfs_root": str(tmp_path / "sys"),
            "procfs_root": str(tmp_path / "proc"),
        },
        capsys,
    )
    fabric = out["ansible_facts"]["multinode_fabric"]
    assert fabric["control_interface"] == "eth2"
    assert fabric["interfaces"]["eth2"]["speed_mbps"] == 100000
    assert out["changed"] is False
    assert fabric["ip_local_port_range"] == ""  # no such file under the fixture's /proc


def test_fabric_main_reads_the_ephemeral_port_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the cluster firewall protects this range; read here, it costs the firewall no round trip
    rng = tmp_path / "proc" / "sys" / "net" / "ipv4" / "ip_local_port_range"
    rng.parent.mkdir(parents=True)
    rng.write_text("40000\t50999\n")
    out = run_module(
        fabric_facts,
        {"ip_binary": fake_ip(tmp_path, DROPLET, DEFAULT), "procfs_root": str(tmp_path / "proc")},
        capsys,
    )
    assert out["ansible_facts"]["multinode_fabric"]["ip_local_port_range"] == "40000\t50999"


def test_fabric_main_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_module(fabric_facts, {"ip_binary": fake_ip(tmp_path, PLAIN, []), "control_interface": "bond0"}, capsys)
    assert out["failed"] is True
    assert "interface bond0 does not exist" in out["msg"]


def test_fabric_facts_on_this_machine() -> None:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "multinode.vllm.fabric_facts",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "control_ip" in proc.stdout and "nccl_socket_ifname" in proc.stdout


def test_ib_tree_active_400g(tmp_path: Path) -> None:
    write_tree(tmp_path, hcas=8, rate_gbps=400)
    facts = summarize(read_hcas(str(tmp_path)), require_active_ports=8, min_rate_gbps=400)
    assert facts["active_ports"] == 8
    assert facts["nccl_ib_hca"] == ",".join(f"mlx5_{i}" for i in range(8))
    assert facts["hcas"]["mlx5_3"]["ports"]["1"]["rate_gbps"] == 400


def test_ib_down_port_and_slow_port_named(tmp_path: Path) -> None:
    write_tree(tmp_path, hcas=4, overrides={"mlx5_1": {"state": "DOWN"}, "mlx5_2": {"rate_gbps": 200}})
    hcas = read_hcas(str(tmp_path))
    assert summarize(hcas, min_rate_gbps=400)["nccl_ib_hca"] == "mlx5_0,mlx5_3"
    with pytest.raises(IbError) as err:
        summarize(hcas, require_active_ports=4, min_rate_gbps=400)
    msg = str(err.value)
    assert "2 of the required 4" in msg
    assert "mlx5_1 port 1 is DOWN (Disabled)" in msg
    assert "mlx5_2 port 1 runs at 200 Gb/s, below min_rate_gbps=400" in msg


def test_ib_absent(tmp_path: Path) -> None:
    facts = summarize(read_hcas(str(tmp_path)))
    assert (facts["present"], facts["nccl_ib_hca"]) == (False, "")
    with pytest.raises(IbError, match="NCCL would fall back to TCP"):
        summarize({}, require_active_ports=1)


def test_ib_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tree(tmp_path, hcas=2, rate_gbps=200)
    ok = run_module(ib_facts, {"sysfs_root": str(tmp_path), "require_active_ports": 2}, capsys)
    assert ok["ansible_facts"]["multinode_ib"]["nccl_ib_hca"] == "mlx5_0,mlx5_1"
    bad = run_module(ib_facts, {"sysfs_root": str(tmp_path), "require_active_ports": 2, "min_rate_gbps": 400}, capsys)
    assert bad["failed"] is True and "below min_rate_gbps=400" in bad["msg"]


def test_fabric_main_reads_the_infiniband_ports_in_the_same_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # one round trip for the fabric and the HCAs: the same facts as ib_facts gives
    ib_root = tmp_path / "ib"
    write_tree(ib_root, hcas=4, rate_gbps=400, overrides={"mlx5_2": {"rate_gbps": 200}})
    ip = fake_ip(tmp_path, DROPLET, DEFAULT)
    both = run_module(
        fabric_facts, {"ip_binary": ip, "ib": True, "ib_sysfs_root": str(ib_root), "ib_min_rate_gbps": 400}, capsys
    )
    alone = run_module(ib_facts, {"sysfs_root": str(ib_root), "min_rate_gbps": 400}, capsys)
    assert both["ansible_facts"]["multinode_ib"] == alone["ansible_facts"]["multinode_ib"]
    assert both["ansible_facts"]["multinode_ib"]["nccl_ib_hca"] == "mlx5_0,mlx5_1,mlx5_3"
    assert both["ansible_facts"]["multinode_fabric"]["control_ip"]
    without = run_module(fabric_facts, {"ip_binary": ip}, capsys)
    assert "multinode_ib" not in without["ansible_facts"]
