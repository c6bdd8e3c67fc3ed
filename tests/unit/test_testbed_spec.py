"""Test bed spec: validation, address derivation, subnet clash detection, image recipe (no podman)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from multinode_vllm.cli import main as cli_main
from multinode_vllm.testbed import image
from multinode_vllm.testbed.podman import UsageError
from multinode_vllm.testbed.spec import (
    TestbedSpec,
    clash_message,
    default_subnet_index,
    existing_subnets,
    find_clashes,
    free_subnet_index,
    plan_networks,
    plan_nodes,
)

# --- validation ---------------------------------------------------------------------------------


def test_defaults_validate():
    spec = TestbedSpec()
    spec.validate()
    assert spec.name == "mnv"
    assert spec.nodes == 2
    assert spec.layout == "bond0"
    assert spec.resolved_shared_dir() == Path("/srv/multinode-vllm/mnv")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "Bad_Name"}, "--name"),
        ({"name": "trailing-"}, "--name"),
        ({"name": "x" * 40}, "--name"),
        ({"nodes": 0}, "--nodes 0"),
        ({"nodes": 65}, "--nodes 65"),
        ({"layout": "mesh"}, "--layout"),
        ({"rails": 0}, "--rails 0"),
        ({"rails": 9}, "--rails 9"),
        ({"subnet_index": 0}, "--subnet-index 0"),
        ({"subnet_index": 255}, "--subnet-index 255"),
        ({"gpus_per_node": 0}, "--gpus-per-node"),
        ({"shm_size": "two gigs"}, "--shm-size"),
        ({"memory": "-1g"}, "--memory"),
        ({"shared_dir": Path("/srv")}, "--shared-dir"),
        ({"shared_dir": Path("relative/dir")}, "--shared-dir"),
    ],
)
def test_bad_spec_names_the_option(kwargs, needle):
    with pytest.raises(UsageError) as err:
        TestbedSpec(**kwargs).validate()
    assert needle in str(err.value)


def test_params_ignore_one_shot_flags_and_rails_of_bond0():
    a = TestbedSpec(name="t1", install_deps=True, local_inventory=False, rails=5)
    b = TestbedSpec(name="t1")
    assert a.params() == b.params()
    assert "rails" not in a.params()
    assert TestbedSpec(layout="droplet", rails=3).params()["rails"] == 3
    assert TestbedSpec(nodes=3).params() != TestbedSpec(nodes=2).params()
    # the derived subnet index is part of the params: an explicit equal index is the same test bed
    assert TestbedSpec(name="t1", subnet_index=default_subnet_index("t1")).params() == b.params()


# --- addresses ----------------------------------------------------------------------------------


def test_default_subnet_index_is_stable_and_in_range():
    assert default_subnet_index("mnv") == default_subnet_index("mnv")
    indexes = {default_subnet_index(f"bed{i}") for i in range(200)}
    assert all(200 <= i < 250 for i in indexes)
    assert len(indexes) > 40  # spread over the range, not constant


def test_bond0_layout_networks_and_ips():
    spec = TestbedSpec(name="t", nodes=3, subnet_index=210)
    nets = plan_networks(spec)
    assert [(n.name, n.interface, n.subnet, n.internal) for n in nets] == [
        ("t-mgmt", "eth0", "10.210.0.0/24", False),
        ("t-fabric", "bond0", "10.210.1.0/24", True),
    ]
    nodes = plan_nodes(spec, nets)
    assert [n.container for n in nodes] == ["t-node1", "t-node2", "t-node3"]
    assert [n.hostname for n in nodes] == ["node1", "node2", "node3"]
    assert nodes[0].ips == {"eth0": "10.210.0.11", "bond0": "10.210.1.11"}
    assert nodes[2].mgmt_ip == "10.210.0.13"
    assert nets[0].gateway == "10.210.0.1"


def test_droplet_layout_has_one_internal_network_per_rail():
    spec = TestbedSpec(name="d", layout="droplet", rails=3, subnet_index=220)
    nets = plan_networks(spec)
    assert [n.interface for n in nets] == ["eth0", "eth1", "eth2", "eth3", "eth4"]
    assert [n.name for n in nets] == ["d-pub", "d-vpc", "d-rail0", "d-rail1", "d-rail2"]
    # exactly one network (eth0) has the default route and NAT
    assert [n.internal for n in nets] == [False, True, True, True, True]
    node2 = plan_nodes(spec, nets)[1]
    assert node2.ips["eth2"] == "10.220.2.12"
    assert len({ipaddress.ip_network(n.subnet) for n in nets}) == 5


def test_every_node_address_is_inside_its_subnet_for_max_nodes():
    spec = TestbedSpec(name="big", nodes=64, subnet_index=201)
    nets = plan_networks(spec)
    for node in plan_nodes(spec, nets):
        for net in nets:
            ip = ipaddress.ip_address(node.ips[net.interface])
            assert ip in ipaddress.ip_network(net.subnet)
            assert str(ip) != net.gateway


# --- clashes ------------------------------------------------------------------------------------

PODMAN_NETWORKS = [
    {"name": "podman", "network_interface": "podman0", "subnets": [{"subnet": "10.88.0.0/16"}]},
    {"name": "other-mgmt", "network_interface": "podman3", "subnets": [{"subnet": "10.210.0.0/24"}]},
    {"name": "t-mgmt", "network_interface": "podman5", "subnets": [{"subnet": "10.211.0.0/24"}]},
]
ROUTES = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0"},
    {"dst": "10.210.0.0/24", "dev": "podman3"},  # the bridge of other-mgmt: reported as the network
    {"dst": "10.211.0.0/24", "dev": "podman5"},  # our own bridge
    {"dst": "10.230.0.0/16", "dev": "wg0"},  # a VPN
]


def test_existing_subnets_skip_own_networks_and_bridge_routes():
    found = existing_subnets(PODMAN_NETWORKS, ROUTES, own_networks=["t-mgmt", "t-fabric"])
    assert ("podman network 'other-mgmt'", "10.210.0.0/24") in found
    assert ("host route 10.230.0.0/16 dev wg0", "10.230.0.0/16") in found
    assert all("10.211." not in cidr for _, cidr in found)
    assert sum(1 for _, cidr in found if cidr == "10.210.0.0/24") == 1


def test_clash_with_podman_network_is_reported_with_a_free_index():
    spec = TestbedSpec(name="t", subnet_index=210)
    taken = existing_subnets(PODMAN_NETWORKS, ROUTES, own_networks=["t-mgmt", "t-fabric"])
    clashes = find_clashes(plan_networks(spec), taken)
    assert [(c.planned_network, c.other_subnet) for c in clashes] == [("t-mgmt", "10.210.0.0/24")]
    msg = clash_message(spec, clashes, taken)
    assert "10.210.0.0/24 (planned for t-mgmt) overlaps podman network 'other-mgmt'" in msg
    free = free_subnet_index(spec, taken)
    assert free is not None and free != 210
    assert f"--subnet-index {free}" in msg
    assert not find_clashes(plan_networks(TestbedSpec(name="t", subnet_index=free)), taken)


def test_clash_with_a_host_route():
    spec = TestbedSpec(name="t", subnet_index=230)
    taken = existing_subnets(PODMAN_NETWORKS, ROUTES)
    clashes = find_clashes(plan_networks(spec), taken)
    assert {c.planned_network for c in clashes} == {"t-mgmt", "t-fabric"}
    assert all("wg0" in c.other for c in clashes)


def test_no_clash_on_a_clean_host():
    spec = TestbedSpec(name="t", subnet_index=240)
    assert find_clashes(plan_networks(spec), existing_subnets(PODMAN_NETWORKS, ROUTES)) == []


# --- image recipe and mirror ------------------------------------------------------------------


def test_recipe_hash_changes_with_the_recipe(monkeypatch):
    before = image.recipe_hash()
    assert before == image.recipe_hash()
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "vim"))
    assert image.recipe_hash() != before


def test_recipe_includes_the_brief_packages():
    for pkg in ("python3", "systemd", "systemd-sysv", "dbus", "openssh-server", "nftables", "sudo"):
        assert pkg in image.PACKAGES


def test_mirror_from_deb822_sources():
    files = {
        "1debian.sources": (
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n"
        ),
        "1google.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
    }
    assert image.mirror_from_sources(files) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_with_options():
    files = {
        "0sources.list": (
            "# deb http://commented.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\n"
        )
    }
    assert image.mirror_from_sources(files) == "http://one.example/debian"


def test_no_bookworm_source_gives_none():
    assert image.mirror_from_sources({"0sources.list": "deb http://a.example/ubuntu jammy main\n"}) is None


# --- CLI: bad input is exit 2 before anything touches podman ---------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["testbed", "up", "--nodes", "0"],
        ["testbed", "up", "--name", "Bad_Name"],
        ["testbed", "up", "--layout", "droplet", "--rails", "12"],
    ],
)
def test_cli_bad_input_exits_2(argv, capsys):
    assert cli_main(argv) == 2
    assert "testbed up:" in capsys.readouterr().err


def test_cli_unknown_layout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        cli_main(["testbed", "up", "--layout", "mesh"])
    assert err.value.code == 2


# --- host tools and state files -----------------------------------------------------------------


def test_missing_tool_names_the_package_and_the_flag(monkeypatch, tmp_path):
    from multinode_vllm.testbed.podman import TestbedError, ensure_tools, missing_tools

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no podman, runc, debootstrap, ssh
    assert missing_tools() == {
        "podman": "podman",
        "runc": "runc",
        "debootstrap": "debootstrap",
        "ssh": "openssh-client",
    }
    with pytest.raises(TestbedError) as err:
        ensure_tools(install_deps=False)
    msg = str(err.value)
    assert "apt-get install -y debootstrap openssh-client podman runc" in msg
    assert "--install-deps" in msg


def test_state_round_trip_under_the_cache_dir(monkeypatch, tmp_path):
    from multinode_vllm.testbed import state

    monkeypatch.setenv("MNV_CACHE_DIR", str(tmp_path))
    assert state.load_state("x") is None
    path = state.save_state("x", {"name": "x", "nodes": [1, 2]})
    assert path == tmp_path / "testbeds" / "x" / "state.json"
    assert state.load_state("x") == {"name": "x", "nodes": [1, 2]}
    assert state.venvs_dir() == tmp_path / "venvs"


def test_the_e2e_beds_never_share_a_default_subnet() -> None:
    """Test beds of the e2e modules run at the same time (two streams, the CLI's mnv beside them):
    two names whose default subnet index is the same clash (mnv-dyn and mnv-e2e both hash to
    10.222, seen). A bed that picks a free index itself (subnet_index=free_index()) is left out."""
    import re

    from multinode_vllm import PROJECT_DIR

    names = {"mnv"}  # the CLI's bed (inventories/local)
    for module in sorted((Path(PROJECT_DIR) / "tests" / "e2e").glob("*.py")):
        text = module.read_text()
        found = set(re.findall(r'^\s*(?:[A-Z0-9_]*NAME|BED|name)\s*=\s*"(mnv[\w-]*)"', text, re.M))
        if "subnet_index=free_index()" in text:
            found -= set(re.findall(r'^NAME\s*=\s*"(mnv[\w-]*)"', text, re.M))
        names |= found
    assert {"mnv-e2e", "mnv-prep", "mnv-slurm", "mnv-mp"} <= names, names  # the search finds them
    by_index: dict[int, list[str]] = {}
    for name in sorted(names):
        by_index.setdefault(default_subnet_index(name), []).append(name)
    clashes = {i: n for i, n in by_index.items() if len(n) > 1}
    assert not clashes, f"e2e test beds with the same default subnet 10.I.0.0/16: {clashes}; rename one"
