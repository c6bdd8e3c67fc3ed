"""Cross-host rules (plugins/module_utils/_cluster.py, _checks.host_values, _packages, _model.cache_fix):
duplicate addresses in one place for validate and preflight, the preflight checks across nodes, and
the values the validate checks see; the messages are the ones the roles' asserts show."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.multinode.vllm.plugins.module_utils._checks import host_values, secret_shape
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import (
    duplicate_addresses,
    duplicates,
    host_vars,
    preflight_checks,
    unresolvable,
)
from ansible_collections.multinode.vllm.plugins.module_utils._model import cache_fix
from ansible_collections.multinode.vllm.plugins.module_utils._packages import outdated

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)


# --- duplicates: one rule for SSH addresses (validate) and control IPs (preflight) --------------


def test_duplicates_in_first_seen_order_with_every_host() -> None:
    pairs = [("n1", "a"), ("n2", "b"), ("n3", "a"), ("n4", "b"), ("n5", "c"), ("n6", "a")]
    assert duplicates(pairs) == [("a", ["n1", "n3", "n6"]), ("b", ["n2", "n4"])]
    assert duplicates([]) == []


def test_duplicate_ssh_addresses_default_to_the_name_and_port_22() -> None:
    hosts: dict[str, dict[str, Any]] = {
        "node1": {"ansible_host": "192.0.2.11"},
        "node2": {"ansible_host": "192.0.2.11", "ansible_port": 22},
        "node3": {"ansible_host": "192.0.2.11", "ansible_port": 2222},
        "node4": {},
        "node5": {"ansible_host": "node4"},
    }
    assert duplicate_addresses(hosts) == ["192.0.2.11:22 (node1, node2)", "node4:22 (node4, node5)"]


def test_unresolvable_skips_hosts_with_an_address_or_a_local_connection() -> None:
    hosts: dict[str, dict[str, Any]] = {
        "known": {},
        "nowhere": {},
        "addressed": {"ansible_host": "192.0.2.1"},
        "local": {"ansible_connection": "local"},
    }
    asked: list[str] = []

    def resolves(name: str) -> bool:
        asked.append(name)
        return name == "known"

    assert unresolvable(hosts, resolves) == ["nowhere"]
    assert asked == ["known", "nowhere"]


class Undefined:
    """Stands in for jinja2's Undefined: a template naming an undefined variable."""


def test_host_vars_leaves_out_unset_and_undefined() -> None:
    hostvars = {"n1": {"a": 1, "b": Undefined(), "c": None}, "n2": {}}
    assert host_vars(hostvars, ["n1", "n2"], ["a", "b", "c", "d"], Undefined) == {"n1": {"a": 1, "c": None}, "n2": {}}


def test_host_values_fill_defaults_skip_optional_and_hide_secrets() -> None:
    rules = {
        "port": {"kind": "port"},
        "tp": {"kind": "int", "optional": True},
        "key": {"kind": "secret"},
        "token": {"kind": "secret"},
    }
    defaults = {"port": 8000, "tp": "{{ facts }}", "key": "", "token": ""}
    got = host_values({"n1": {"port": 9000, "key": 314159}, "n2": {"tp": 4, "token": "s3cret"}}, rules, defaults)
    # each secret's salted digest of this run: equal values have equal ones (both "" here), never the value
    digests = {(h, v): got[h][v].pop("digest") for h in got for v in ("key", "token")}
    assert digests[("n1", "token")] == digests[("n2", "key")] and len(set(digests.values())) == 3
    assert got == {
        "n1": {
            "port": 9000,
            "key": {"secret_type": "number", "empty": False},
            "token": {"secret_type": "string", "empty": True},
        },
        "n2": {
            "port": 8000,
            "tp": 4,
            "key": {"secret_type": "string", "empty": True},
            "token": {"secret_type": "string", "empty": False},
        },
    }
    assert "s3cret" not in json.dumps(got)


@pytest.mark.parametrize(
    ("value", "kind", "empty"),
    [
        (None, "null", True),
        (True, "boolean", False),
        ("", "string", True),
        ("x", "string", False),
        (1.5, "number", False),
        ({"a": 1}, "mapping", False),
        (["a"], "list", False),
        (object(), "other", False),
    ],
)
def test_secret_shape(value: Any, kind: str, empty: bool) -> None:
    assert secret_shape(value) == {"secret_type": kind, "empty": empty}


# --- preflight across nodes -----------------------------------------------------------------------


def node(
    driver: str = "550.127.05",
    count: int = 8,
    gpus: list[dict[str, Any]] | None = None,
    ib: dict[str, Any] | None = None,
    ip: str = "10.0.0.1",
    iface: str = "bond0",
) -> dict[str, Any]:
    return {
        "ansible_facts": {
            "multinode_gpu": {"driver_version": driver, "count": count, "gpus": gpus or []},
            "multinode_ib": ib or {"active_ports": 0, "problems": []},
            "multinode_fabric": {"control_interface": iface, "control_ip": ip, "control_subnet": "10.0.0.0/24"},
        }
    }


def test_preflight_checks_pass_on_a_healthy_pair() -> None:
    links = {"total": 18, "active": 18, "inactive": []}
    gpus = [{"index": 0, "uuid": "GPU-a", "nvlinks": links}]
    got = preflight_checks({"node1": node(gpus=gpus), "node2": node(gpus=gpus, ip="10.0.0.2")}, driver_version="550")
    for check in ("driver_mismatch", "nvlink_problems", "ib_problems", "duplicate_ips", "loopback"):
        assert got[check] == [], check
    assert got["drivers_text"] == "node1 runs 550.127.05, node2 runs 550.127.05"
    assert got["counts_text"] == "node1 has 8, node2 has 8"
    assert got["fabric_text"] == "node1 bond0 10.0.0.1 10.0.0.0/24, node2 bond0 10.0.0.2 10.0.0.0/24"


def test_preflight_checks_name_every_node_gpu_and_link_at_fault() -> None:
    down = {"total": 18, "active": 17, "inactive": [5]}
    hosts = {
        "node1": node(gpus=[{"index": 0, "uuid": "GPU-a", "nvlinks": {"total": 0}}], ib={"active_ports": 0}),
        "node2": node(
            driver="535.183.01",
            count=7,
            gpus=[{"index": 3, "uuid": "GPU-b", "nvlinks": down}],
            ib={"active_ports": 1, "problems": ["mlx5_2 port 1 is DOWN"]},
            ip="10.0.0.2",
        ),
        "node3": node(ip="10.0.0.1", ib={"active_ports": 2, "problems": []}),
        "node4": {},  # no facts at all
    }
    got = preflight_checks(hosts, driver_version=550, ib_required_ports="4", ib_hca_prefix="mlx5")
    assert got["driver_mismatch"] == [
        "node2 runs 535.183.01, preflight_driver_version=550",
        "node4 runs none, preflight_driver_version=550",
    ]
    assert got["drivers_text"] == "node1 runs 550.127.05, node2 runs 535.183.01, node3 runs 550.127.05, node4 runs none"
    assert got["counts"] == [
        {"host": "node1", "count": 8},
        {"host": "node2", "count": 7},
        {"host": "node3", "count": 8},
        {"host": "node4", "count": 0},
    ]
    assert got["nvlink_problems"] == [
        "node1 GPU 0 (GPU-a): no NVLink at all (a PCIe card, or preflight_require_nvlink=false)",
        "node2 GPU 3 (GPU-b): NVLink 5 inactive, 17 of 18 active",
    ]
    assert got["ib_problems"] == [
        "node1: 0 of 4 ports usable (no mlx5* HCA)",
        "node2: 1 of 4 ports usable (mlx5_2 port 1 is DOWN)",
        "node3: 2 of 4 ports usable (every mlx5* port it has is usable)",
        "node4: 0 of 4 ports usable (no mlx5* HCA)",
    ]
    assert got["duplicate_ips"] == ["10.0.0.1 on node1, node3"]
    assert got["fabric"][3] == {"host": "node4", "interface": "", "ip": "", "subnet": ""}


def test_preflight_checks_loopback_and_missing_addresses() -> None:
    got = preflight_checks({"a": node(ip="127.0.0.1", iface="lo"), "b": node(ip=""), "c": node(ip="")})
    assert got["loopback"] == ["a lo 127.0.0.1"]
    assert got["duplicate_ips"] == ["no address on b, c"]
    assert got["driver_mismatch"] == []  # no driver_version given: any driver, as long as they agree


# --- nvidia_driver: packages off the wanted branch ------------------------------------------------


def test_outdated_packages_by_branch_and_by_version() -> None:
    packages = {
        "nvidia-driver": [{"version": "550.127.05-1"}],
        "nvidia-kernel-dkms": [{"version": "535.183.01-1"}],
        "nvidia-fabricmanager-550": [{"version": "5500.1-1"}],
    }
    names = ["nvidia-driver", "nvidia-kernel-dkms", "nvidia-fabricmanager-550", "nvidia-smi"]
    assert outdated(packages, names, branch="550") == [
        "nvidia-kernel-dkms 535.183.01-1",
        "nvidia-fabricmanager-550 5500.1-1",  # "5500." is not the branch 550
        "nvidia-smi not installed",
    ]
    assert outdated(packages, ["nvidia-driver"], version="550.127.05", branch="550") == []
    assert outdated(packages, ["nvidia-driver"], version="550.127", branch="550") == ["nvidia-driver 550.127.05-1"]
    assert outdated({}, ["x"], branch=550) == ["x not installed"]


# --- model_cache: the fix for an incomplete model -----------------------------------------------

BASE = {
    "hub": False,
    "local": False,
    "is_head": True,
    "head_complete": False,
    "model": "/srv/models/llama",
    "hf_home": "/srv/hf",
    "download_home": "/srv/hf-staging",
    "repo_folder": "models--org--name",
    "copy_here": False,
    "copy_src": "/data/llama",
}


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        (
            {"is_head": False, "head_complete": True, "hub": True},
            "the head sees the model complete and this node does not: /srv/hf is not the same shared storage here; "
            "mount it at the same path on every node, or set model_cache_storage=local.",
        ),
        (
            {"is_head": False, "head_complete": True},
            "the head sees the model complete and this node does not: /srv/models/llama is not the same shared "
            "storage here; mount it at the same path on every node, or set model_cache_storage=local.",
        ),
        (
            {"hub": True, "local": True, "is_head": False, "head_complete": True},
            "delete the files named above from the cache (and their blobs under "
            "/srv/hf-staging/hub/models--org--name/blobs), then rerun the model phase: the download fetches what "
            "is missing.",
        ),
        ({"copy_here": True}, "repair the source /data/llama, then rerun: the copy replaces what differs."),
        (
            {},
            "put a complete copy of the model at multinode_model=/srv/models/llama (or set model_cache_source_path "
            "to a complete copy to copy from), then rerun.",
        ),
    ],
)
def test_cache_fix(over: dict[str, Any], expected: str) -> None:
    assert cache_fix(**{**BASE, **over}) == expected


# --- through Ansible: hostvars as the filters read them -------------------------------------------


def test_filters_read_hostvars_with_templates_undefined_and_vault(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(
        """
all:
  children:
    vllm_cluster:
      hosts:
        node1: {ansible_host: 192.0.2.11, multinode_vllm_port: "{{ 8000 + 1 }}", multinode_api_key: 123}
        node2: {ansible_host: 192.0.2.11, multinode_vllm_port: "{{ not_defined_anywhere }}"}
        node3: {ansible_connection: local}
"""
    )
    expr = (
        "{{ {'values': hostvars | multinode.vllm.host_values(groups['vllm_cluster'], rules, defaults),"
        " 'dups': hostvars | multinode.vllm.duplicate_addresses(groups['vllm_cluster']),"
        " 'unresolvable': hostvars | multinode.vllm.unresolvable_hosts(groups['vllm_cluster'])} | to_json }}"
    )
    extra = {
        "rules": {"multinode_vllm_port": {"kind": "port"}, "multinode_api_key": {"kind": "secret"}},
        "defaults": {"multinode_vllm_port": 8000, "multinode_api_key": ""},
    }
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "ansible"),
            "localhost",
            "-i",
            str(tmp_path / "hosts.yml"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            f"msg={expr}",
            "-e",
            json.dumps(extra),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        },
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msg = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    got = json.loads(msg) if isinstance(msg, str) else msg
    digests = {h: v["multinode_api_key"].pop("digest") for h, v in got["values"].items()}
    assert digests["node2"] == digests["node3"] != digests["node1"]  # salted: equal values, equal digests
    assert got["values"] == {
        "node1": {"multinode_vllm_port": 8001, "multinode_api_key": {"secret_type": "number", "empty": False}},
        # a template naming an undefined variable reads as unset: checked at the default
        "node2": {"multinode_vllm_port": 8000, "multinode_api_key": {"secret_type": "string", "empty": True}},
        "node3": {"multinode_vllm_port": 8000, "multinode_api_key": {"secret_type": "string", "empty": True}},
    }
    assert got["dups"] == ["192.0.2.11:22 (node1, node2)"]
    assert got["unresolvable"] == []  # node3 is local


def test_a_template_naming_an_undefined_variable_is_reported_not_read_as_unset() -> None:
    from ansible_collections.multinode.vllm.plugins.module_utils._cluster import undefined_refs

    class Missing:
        def __init__(self, name: str) -> None:
            self._undefined_name = name

    hv = {
        "node1": {"multinode_api_key": Missing("vault_multinode_api_key"), "multinode_vllm_port": 8000},
        "node2": {"multinode_api_key": Missing("vault_multinode_api_key")},
        "node3": {"multinode_api_key": "set"},
    }
    assert undefined_refs(hv, ["node1", "node2", "node3"], ["multinode_api_key", "multinode_vllm_port"], Missing) == [
        {"var": "multinode_api_key", "missing": "vault_multinode_api_key", "hosts": ["node1", "node2"]}
    ]


def test_a_misspelt_variable_with_a_role_prefix_is_reported_with_the_closest_name() -> None:
    from ansible_collections.multinode.vllm.plugins.module_utils._cluster import unknown_names

    specs = [{"argument_specs": {"main": {"options": {"vllm_serve_max_num_seqs": {}, "multinode_model": {}}}}}]
    defined = {
        "node1": ["vllm_serve_max_num_seq", "multinode_model", "ansible_host", "my_own_var"],
        "node2": ["vllm_serve_max_num_seq", "multinode_zzz"],
    }
    assert unknown_names(defined, specs, ["multinode_venv"], ["vllm_serve_", "multinode_"]) == [
        {"var": "multinode_zzz", "hosts": ["node2"], "suggestion": ""},
        {"var": "vllm_serve_max_num_seq", "hosts": ["node1", "node2"], "suggestion": "vllm_serve_max_num_seqs"},
    ]
