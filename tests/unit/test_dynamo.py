"""The Dynamo stack's rules (plugins/module_utils/_dynamo.py) and their filters: the layout checks
and their messages, the worker plan and unit command lines, the environment every process gets,
and the registration report read from etcd's v3 JSON gateway."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.filter.dynamo import FilterModule
from ansible_collections.multinode.vllm.plugins.module_utils import _dynamo

ROOT = Path(PROJECT_DIR)
SERVE_DEFAULTS = yaml.safe_load((ROOT / "roles/dynamo_serve/defaults/main.yml").read_text())
MULTINODE_DEFAULTS = yaml.safe_load((ROOT / "roles/multinode/defaults/main.yml").read_text())
PLANE_DEFAULTS = yaml.safe_load((ROOT / "roles/dynamo_plane/defaults/main.yml").read_text())
FILTERS = FilterModule().filters()
HOSTS = ["node1", "node2"]
IPS = {"node1": "10.9.1.11", "node2": "10.9.1.12"}


def cfg(**over: Any) -> dict[str, Any]:
    """The product defaults of every checked variable, the dynamo stack chosen, the API open."""
    base = {k: v for k, v in SERVE_DEFAULTS.items()}
    for k in ("multinode_vllm_port", "multinode_etcd_port", "multinode_nats_port", "multinode_nats_monitor_port"):
        base[k] = MULTINODE_DEFAULTS[k]
    base["dynamo_plane_etcd_peer_port"] = PLANE_DEFAULTS["dynamo_plane_etcd_peer_port"]
    base.update(multinode_stack="dynamo", multinode_runtime="native", multinode_api_open=True)
    base.update(over)
    return base


def seed_disagg(**over: Any) -> dict[str, Any]:
    """Seed 004: decode on the head (node1), prefill on node2."""
    seed = {
        "dynamo_serve_layout": "disaggregated",
        "dynamo_serve_prefill_hosts": ["node2"],
        "dynamo_serve_decode_hosts": ["node1"],
    }
    return cfg(**{**seed, **over})


# ------------------------------------------------------------------------------- layout checks
def test_defaults_of_the_dynamo_stack_are_valid_on_two_8_gpu_nodes() -> None:
    assert _dynamo.layout_problems(cfg(), HOSTS, 8) == []
    assert _dynamo.layout_problems(seed_disagg(), HOSTS, 8) == []


def test_the_vllm_stack_ignores_the_dynamo_variables() -> None:
    assert _dynamo.layout_problems(cfg(multinode_stack="vllm", dynamo_serve_layout="bogus"), HOSTS, 8) == []


def test_an_unknown_stack_names_the_variable_and_the_choices() -> None:
    (msg,) = _dynamo.layout_problems({"multinode_stack": "triton"}, HOSTS, 8)
    assert msg.startswith("multinode_stack='triton': use one of vllm, dynamo")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("dynamo_serve_layout", "split"),
        ("dynamo_serve_engine", "sglang"),
        ("dynamo_serve_router_mode", "kv-aware"),
    ],
)
def test_unknown_choices_are_named_with_what_is_valid(var: str, value: str) -> None:
    problems = _dynamo.layout_problems(cfg(**{var: value}), HOSTS, 8)
    assert len(problems) == 1
    assert problems[0].startswith(f"{var}={value!r}: use one of ")


def test_the_docker_runtime_is_refused() -> None:
    (msg,) = _dynamo.layout_problems(cfg(multinode_runtime="docker"), HOSTS, 8)
    assert "multinode_runtime='docker'" in msg and "set multinode_runtime: native" in msg


def test_disaggregated_without_prefill_hosts_says_what_to_set() -> None:
    (msg,) = _dynamo.layout_problems(seed_disagg(dynamo_serve_prefill_hosts=[]), HOSTS, 8)
    assert msg.startswith("dynamo_serve_prefill_hosts is empty")
    assert "node1, node2" in msg and "dynamo_serve_layout: aggregated" in msg


def test_an_unknown_host_is_named_with_the_cluster_hosts() -> None:
    (msg,) = _dynamo.layout_problems(seed_disagg(dynamo_serve_decode_hosts=["node1", "gpu9"]), HOSTS, 8)
    assert msg == (
        "dynamo_serve_decode_hosts names gpu9, not in the cluster (node1, node2): "
        "list inventory host names of groups ray_head/ray_workers"
    )


def test_a_host_string_instead_of_a_list_is_refused() -> None:
    (msg,) = _dynamo.layout_problems(seed_disagg(dynamo_serve_prefill_hosts="node2"), HOSTS, 8)
    assert msg.startswith("dynamo_serve_prefill_hosts='node2': use a list of inventory host names")


def test_the_same_host_twice_is_refused() -> None:
    (msg,) = _dynamo.layout_problems(seed_disagg(dynamo_serve_prefill_hosts=["node2", "node2"]), HOSTS, 8)
    assert "lists a host twice" in msg


def test_clashing_ports_name_both_variables() -> None:
    (msg,) = _dynamo.layout_problems(cfg(multinode_nats_port=2379), HOSTS, 8)
    assert msg.startswith("multinode_etcd_port and multinode_nats_port are both 2379")


def test_the_frontend_port_may_not_be_a_plane_port() -> None:
    (msg,) = _dynamo.layout_problems(cfg(multinode_vllm_port=8222), HOSTS, 8)
    assert "multinode_nats_monitor_port and multinode_vllm_port are both 8222" in msg


@pytest.mark.parametrize("port", [0, 70000, "http", True])
def test_a_bad_port_is_named(port: Any) -> None:
    problems = _dynamo.layout_problems(cfg(multinode_etcd_port=port), HOSTS, 8)
    assert problems == [f"multinode_etcd_port={port!r}: use an integer port in 1-65535"]


@pytest.mark.parametrize("var", ["dynamo_serve_workers_per_node", "dynamo_serve_decode_tensor_parallel_size"])
def test_counts_must_be_positive_integers(var: str) -> None:
    assert _dynamo.layout_problems(cfg(**{var: 0}), HOSTS, 8) == [f"{var}=0: use an integer of 1 or more"]


def test_too_many_gpus_on_a_node_are_counted() -> None:
    # node1 decodes and prefills: 8 + 8 GPUs on an 8-GPU node
    problems = _dynamo.layout_problems(seed_disagg(dynamo_serve_prefill_hosts=["node1", "node2"]), HOSTS, 8)
    assert problems == [
        "node1 would run 2 workers needing 16 GPUs (prefill TP 8 + decode TP 8) but has 8: lower "
        "dynamo_serve_workers_per_node or the TP (dynamo_serve_*tensor_parallel_size), or move a role to another host"
    ]
    # the mocker uses no GPU
    assert (
        _dynamo.layout_problems(seed_disagg(dynamo_serve_engine="mocker", dynamo_serve_prefill_hosts=HOSTS), HOSTS, 8)
        == []
    )


def test_an_api_without_key_must_be_asked_for_by_name() -> None:
    (msg,) = _dynamo.layout_problems(cfg(multinode_api_open=False), HOSTS, 8)
    assert "the Dynamo frontend takes no API key" in msg and "multinode_api_open: true" in msg
    assert _dynamo.layout_problems(cfg(multinode_api_open="true"), HOSTS, 8) == []


# ---------------------------------------------------------------------------------- the plan
def test_aggregated_runs_workers_on_every_node_with_their_own_gpus() -> None:
    plan = _dynamo.worker_plan(cfg(dynamo_serve_workers_per_node=2, dynamo_serve_tensor_parallel_size=4), HOSTS)
    assert plan["node1"] == [
        {"unit": "dynamo-worker-agg-0", "mode": "agg", "tp": 4, "devices": "0,1,2,3"},
        {"unit": "dynamo-worker-agg-1", "mode": "agg", "tp": 4, "devices": "4,5,6,7"},
    ]
    assert plan["node2"] == plan["node1"]


def test_the_seed_disaggregated_plan_decodes_on_the_head_and_prefills_on_node2() -> None:
    plan = _dynamo.worker_plan(seed_disagg(dynamo_serve_prefill_tensor_parallel_size=2), HOSTS)
    assert plan == {
        "node1": [{"unit": "dynamo-worker-decode-0", "mode": "decode", "tp": 8, "devices": "0,1,2,3,4,5,6,7"}],
        "node2": [{"unit": "dynamo-worker-prefill-0", "mode": "prefill", "tp": 2, "devices": "0,1"}],
    }


def test_a_host_with_both_roles_gets_the_next_gpus() -> None:
    plan = _dynamo.worker_plan(
        seed_disagg(
            dynamo_serve_prefill_hosts=["node1"],
            dynamo_serve_prefill_tensor_parallel_size=2,
            dynamo_serve_decode_tensor_parallel_size=4,
        ),
        HOSTS,
    )
    assert [(w["mode"], w["devices"]) for w in plan["node1"]] == [("prefill", "0,1"), ("decode", "2,3,4,5")]
    assert plan["node2"] == []


def test_the_plan_refuses_a_host_outside_the_cluster() -> None:
    with pytest.raises(_dynamo.DynamoError, match="gpu9 is not a cluster host"):
        _dynamo.worker_plan(seed_disagg(dynamo_serve_prefill_hosts=["gpu9"]), HOSTS)


# ------------------------------------------------------------------------------- command lines
def test_the_mocker_worker_argv() -> None:
    argv = _dynamo.worker_argv("mocker", "prefill", "/v/bin/python", "/m/tiny", "tiny", 1, ["--speedup-ratio", "10"])
    assert argv == [
        "/v/bin/python",
        "-m",
        "dynamo.mocker",
        "--model-path",
        "/m/tiny",
        "--model-name",
        "tiny",
        "--disaggregation-mode",
        "prefill",
        "--speedup-ratio",
        "10",
    ]


def test_the_vllm_worker_argv_carries_tp_and_the_kv_transfer_when_disaggregated() -> None:
    agg = _dynamo.worker_argv("vllm", "agg", "py", "/m/405b", "llama", 8)
    assert agg[:3] == ["py", "-m", "dynamo.vllm"]
    assert agg[agg.index("--tensor-parallel-size") + 1] == "8"
    assert agg[agg.index("--served-model-name") + 1] == "llama"
    assert "--kv-transfer-config" not in agg
    decode = _dynamo.worker_argv("vllm", "decode", "py", "/m/405b", "llama", 8)
    cfg_json = json.loads(decode[decode.index("--kv-transfer-config") + 1])
    assert cfg_json == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    assert decode[decode.index("--disaggregation-mode") + 1] == "decode"


@pytest.mark.parametrize(("engine", "mode"), [("trtllm", "agg"), ("vllm", "encode")])
def test_unknown_engines_and_modes_are_refused(engine: str, mode: str) -> None:
    with pytest.raises(_dynamo.DynamoError):
        _dynamo.worker_argv(engine, mode, "py", "/m", "m")


def test_the_frontend_argv_uses_etcd_discovery_and_the_router_mode() -> None:
    argv = _dynamo.frontend_argv("py", "0.0.0.0", 8000, "kv", ["--migration-limit", "3"])
    assert argv == [
        "py",
        "-m",
        "dynamo.frontend",
        "--http-host",
        "0.0.0.0",
        "--http-port",
        "8000",
        "--router-mode",
        "kv",
        "--discovery-backend",
        "etcd",
        "--migration-limit",
        "3",
    ]
    with pytest.raises(_dynamo.DynamoError, match="dynamo_serve_router_mode='kv-aware'"):
        _dynamo.frontend_argv("py", "0.0.0.0", 8000, "kv-aware")


def test_every_process_finds_the_plane_at_the_head_and_advertises_its_own_ip() -> None:
    env = _dynamo.runtime_env("10.9.1.12", "10.9.1.11", 2379, 4222)
    assert env["ETCD_ENDPOINTS"] == "http://10.9.1.11:2379"
    assert env["NATS_SERVER"] == "nats://10.9.1.11:4222"
    for key in ("DYN_TCP_RPC_HOST", "DYN_TCP_RESPONSE_STREAM_HOST", "DYN_EVENT_PLANE_HOST", "DYN_SYSTEM_HOST"):
        assert env[key] == "10.9.1.12"
    with pytest.raises(_dynamo.DynamoError, match="control IP 'eth0'"):
        _dynamo.runtime_env("eth0", "10.9.1.11", 2379, 4222)


# --------------------------------------------------------------------------- etcd registrations
def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def instance(component: str, ip: str, instance_id: str, namespace: str = "dynamo") -> dict[str, str]:
    value = {
        "component": component,
        "endpoint": "generate",
        "namespace": namespace,
        "instance_id": int(instance_id, 16),
        "transport": {"tcp": f"{ip}:41235/{namespace}/{component}/generate"},
    }
    return {
        "key": b64(f"v1/instances/{namespace}/{component}/generate/{instance_id}"),
        "value": b64(json.dumps(value)),
        "lease": "7587889946181012234",
    }


def answer(*kvs: dict[str, str]) -> dict[str, Any]:
    return {"header": {"revision": "42"}, "kvs": list(kvs), "count": str(len(kvs))}


def test_the_range_body_covers_exactly_the_prefix() -> None:
    body = _dynamo.etcd_range_body("v1/instances/")
    assert base64.b64decode(body["key"]) == b"v1/instances/"
    assert base64.b64decode(body["range_end"]) == b"v1/instances0"  # '/' + 1


def test_registrations_are_read_from_the_keys_and_the_advertised_address() -> None:
    mdc = {"key": b64("v1/mdc/dynamo/backend/generate/694d9a"), "value": b64('{"display_name": "tiny"}')}
    kvs = _dynamo.parse_etcd_range(json.dumps(answer(instance("backend", "10.9.1.11", "694d9a"), mdc)))
    regs = _dynamo.registrations(kvs)
    assert regs == [
        {
            "namespace": "dynamo",
            "component": "backend",
            "endpoint": "generate",
            "instance": "694d9a",
            "host": "10.9.1.11",
        }
    ]


def test_an_empty_etcd_answers_without_kvs() -> None:
    assert _dynamo.parse_etcd_range({"header": {"revision": "3"}}) == []
    assert _dynamo.parse_etcd_range("") == []
    with pytest.raises(_dynamo.DynamoError):
        _dynamo.parse_etcd_range([1, 2])


def test_the_report_counts_each_worker_on_the_host_it_advertises() -> None:
    plan = _dynamo.worker_plan(seed_disagg(), HOSTS)
    regs = _dynamo.registrations(
        _dynamo.parse_etcd_range(answer(instance("backend", "10.9.1.11", "a1"), instance("prefill", "10.9.1.12", "b2")))
    )
    report = _dynamo.registration_report(plan, IPS, regs)
    assert report == {
        "hosts": {
            "node1": {"backend": {"expected": 1, "registered": 1}},
            "node2": {"prefill": {"expected": 1, "registered": 1}},
        },
        "missing": [],
        "ok": True,
    }


def test_a_dead_prefill_worker_is_missing_even_if_another_host_registers_prefill() -> None:
    plan = _dynamo.worker_plan(seed_disagg(), HOSTS)
    # a prefill worker advertising node1's address does not stand in for node2's
    regs = _dynamo.registrations(
        _dynamo.parse_etcd_range(answer(instance("backend", "10.9.1.11", "a1"), instance("prefill", "10.9.1.11", "c3")))
    )
    report = _dynamo.registration_report(plan, IPS, regs)
    assert not report["ok"]
    assert report["missing"] == [
        "node2: 0 of 1 prefill worker(s) registered in etcd (dynamo/prefill/generate advertising 10.9.1.12)"
    ]


def test_other_namespaces_do_not_count() -> None:
    plan = _dynamo.worker_plan(cfg(), HOSTS)
    regs = _dynamo.registrations(
        _dynamo.parse_etcd_range(
            answer(instance("backend", "10.9.1.11", "a1"), instance("backend", "10.9.1.12", "a2", namespace="test"))
        )
    )
    report = _dynamo.registration_report(plan, IPS, regs)
    assert report["hosts"]["node2"] == {"backend": {"expected": 1, "registered": 0}}


def test_stale_units_after_a_layout_change() -> None:
    found = [
        "dynamo-worker-agg-0.service",
        "/etc/systemd/system/dynamo-worker-agg-1.service",
        "dynamo-frontend.service",
    ]
    assert _dynamo.stale_units(found, ["dynamo-worker-decode-0"]) == ["dynamo-worker-agg-0", "dynamo-worker-agg-1"]
    assert _dynamo.stale_units(["dynamo-worker-decode-0.service"], ["dynamo-worker-decode-0"]) == []


def test_status_reads_the_heads_plane_and_frontend_then_the_workers() -> None:
    plan = _dynamo.worker_plan(seed_disagg(), HOSTS)
    assert _dynamo.node_units(plan["node1"], True) == [
        {"name": "dynamo-etcd"},
        {"name": "dynamo-nats"},
        {"name": "dynamo-frontend"},
        {"name": "dynamo-worker-decode-0"},
    ]
    assert _dynamo.node_units(plan["node2"], False) == [{"name": "dynamo-worker-prefill-0"}]


def healthy_status() -> dict[str, Any]:
    """A status report of the seed's disaggregated stack with everything up."""
    active = {"active": True, "state": "active"}
    return {
        "etcd_healthy": True,
        "nats_healthy": True,
        "units": {
            "node1": {u: dict(active) for u in (*_dynamo.HEAD_UNITS, "dynamo-worker-decode-0")},
            "node2": {"dynamo-worker-prefill-0": dict(active)},
        },
        "missing": [],
    }


def test_a_healthy_stack_has_no_problems() -> None:
    assert _dynamo.status_problems(healthy_status(), HOSTS) == []


def test_status_problems_name_the_plane_each_dead_unit_a_silent_node_and_the_missing_workers() -> None:
    st = healthy_status()
    st["etcd_healthy"] = False
    st["units"]["node2"]["dynamo-worker-prefill-0"] = {"active": False, "state": "failed"}
    st["units"]["node1"]["dynamo-frontend"] = {"active": False}
    missing = "node2: 0 of 1 prefill worker(s) registered in etcd (dynamo/prefill/generate advertising 10.9.1.12)"
    st["missing"] = [missing]
    assert _dynamo.status_problems(st, HOSTS) == [
        "etcd: /health on the head did not answer healthy (the plane: dynamo-etcd on the head)",
        "node1: dynamo-frontend is not active",
        "node2: dynamo-worker-prefill-0 is failed",
        missing,
    ]
    st = healthy_status()
    st["nats_healthy"] = False
    del st["units"]["node2"]
    assert _dynamo.status_problems(st, HOSTS) == [
        "NATS: /healthz on the head did not answer ok (the plane: dynamo-nats on the head)",
        "node2: no unit state was read (the node did not answer)",
    ]


def test_the_status_problems_filter_wants_the_report() -> None:
    assert FILTERS["dynamo_status_problems"](healthy_status(), HOSTS) == []
    with pytest.raises(AnsibleFilterError, match="give the status report"):
        FILTERS["dynamo_status_problems"]("healthy", HOSTS)


def test_multinode_vllm_status_covers_the_dynamo_stack() -> None:
    """playbooks/status.yml: the vllm stack's play ends on dynamo nodes, and imports the Dynamo status,
    whose plays end on vllm nodes; the Dynamo report is exported as multinode_status with its problems."""
    status = yaml.safe_load((ROOT / "playbooks/status.yml").read_text())
    imports = [p["ansible.builtin.import_playbook"] for p in status if "ansible.builtin.import_playbook" in p]
    assert imports == ["dynamo_status.yml", "slurm_status.yml"]  # (SLURM: an inventory of login hosts only)
    plays = [p for p in status if "hosts" in p]
    stacks = {
        play["name"]: play["pre_tasks"][0]["vars"]["_play_stack"]
        for doc in (plays, yaml.safe_load((ROOT / "playbooks/dynamo_status.yml").read_text()))
        for play in doc
    }
    assert stacks == {
        "Status of every node": "vllm",
        "Dynamo status - the units of every node": "dynamo",
        "Dynamo status - the plane and the registrations": "dynamo",
    }
    tasks = yaml.safe_load((ROOT / "roles/dynamo_serve/tasks/status.yml").read_text())
    export = next(t for t in tasks if "ansible.builtin.set_stats" in t)
    assert export["ansible.builtin.set_stats"]["data"] == {"multinode_status": "{{ dynamo_serve_status }}"}
    report = next(t for t in tasks if t["name"] == "Put the report together")
    assert "dynamo_status_problems(_multinode_hosts)" in report["vars"]["_dynamo_serve_status_now"]


# ------------------------------------------------------------------------------------ filters
def test_the_registration_filter_joins_parse_and_report() -> None:
    plan = FILTERS["dynamo_worker_plan"](cfg(), HOSTS)
    got = FILTERS["dynamo_registrations"](answer(instance("backend", "10.9.1.11", "a1")), plan, IPS)
    assert got["ok"] is False and got["registrations"][0]["host"] == "10.9.1.11"
    assert got["missing"] == [
        "node2: 0 of 1 backend worker(s) registered in etcd (dynamo/backend/generate advertising 10.9.1.12)"
    ]


def test_filters_turn_rule_errors_into_filter_errors() -> None:
    with pytest.raises(AnsibleFilterError, match="dynamo_serve_engine='sglang'"):
        FILTERS["dynamo_worker_argv"]({"mode": "agg", "tp": 1}, "sglang", "py", "/m", "m")
    with pytest.raises(AnsibleFilterError, match="give a dict"):
        FILTERS["dynamo_layout_problems"](["not", "a", "dict"], HOSTS)


def test_every_filter_is_documented_beside_the_plugin() -> None:
    for name in FILTERS:
        doc = yaml.safe_load((ROOT / "plugins/filter" / f"{name}.yml").read_text())
        assert doc["DOCUMENTATION"]["name"] == name


def test_the_lock_pins_every_package_and_holds_no_placeholder() -> None:
    lines = [
        line
        for line in (ROOT / "roles/dynamo_serve/files/dynamo-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert all("==" in line for line in lines), lines
    names = {line.split("==")[0].lower() for line in lines}
    assert {"ai-dynamo", "ai-dynamo-runtime", "transformers", "uvloop", "pydantic"} <= names
    assert "aisimulate" not in names


# ------------------------------------------------------------------------------------ test bed
def _bed_vars(tmp_path: Path, layout: str) -> dict[str, Any]:
    from dataclasses import asdict

    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    from multinode_vllm.testbed import inventory as inv
    from multinode_vllm.testbed.spec import TestbedSpec, plan_networks, plan_nodes

    spec = TestbedSpec(name="t", nodes=2, layout=layout, subnet_index=213)
    nets = plan_networks(spec)
    state = {
        "name": spec.name,
        "layout": spec.layout,
        "ssh_key": "/k",
        "networks": [asdict(n) for n in nets],
        "nodes": [asdict(n) for n in plan_nodes(spec, nets)],
    }
    inv_dir = inv.write_private(state, tmp_path / "inventory")
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(inv_dir / "hosts.yml")])
    hv: dict[str, Any] = VariableManager(loader=loader, inventory=manager).get_vars(host=manager.get_host("node2"))
    return {"groups": manager.get_groups_dict(), "vars": hv, "image": spec.image}


def test_the_dynamo_bed_chooses_the_dynamo_stack_through_its_group(tmp_path: Path) -> None:
    got = _bed_vars(tmp_path, "dynamo")
    assert got["image"] == "localhost/multinode-vllm-node:bookworm-dynamo"
    assert sorted(got["groups"]["dynamo_testbed"]) == ["node1", "node2"]
    assert got["groups"]["ray_head"] == ["node1"]
    hv = got["vars"]
    assert (hv["multinode_stack"], hv["dynamo_serve_engine"], hv["multinode_api_open"]) == ("dynamo", "mocker", True)
    assert hv["dynamo_serve_venv"] == "/var/tmp/multinode-vllm/venvs/dynamo"
    # the other beds keep the vllm stack
    other = _bed_vars(tmp_path / "b", "bond0")
    assert "dynamo_testbed" not in other["groups"] and "multinode_stack" not in other["vars"]


def test_the_dynamo_image_bakes_etcd_and_nats() -> None:
    from multinode_vllm.testbed import image

    assert image.packages(image.DYNAMO_IMAGE)[-2:] == ("etcd-server", "nats-server")
    assert image.recipe_hash(image.DYNAMO_IMAGE) != image.recipe_hash(image.IMAGE)


def test_worker_groups_are_what_the_planner_sizes() -> None:
    """Each group's TP variable and value: validate plans one worker of each on one node."""
    groups = FilterModule().filters()["dynamo_worker_groups"]
    assert groups({"dynamo_serve_tensor_parallel_size": 4}) == [
        {"group": "agg", "var": "dynamo_serve_tensor_parallel_size", "tp": 4}
    ]
    disagg = {
        "dynamo_serve_layout": "disaggregated",
        "dynamo_serve_prefill_hosts": ["node2"],
        "dynamo_serve_decode_hosts": ["node1"],
        "dynamo_serve_prefill_tensor_parallel_size": 8,
        "dynamo_serve_decode_tensor_parallel_size": "2",
    }
    assert groups(disagg) == [
        {"group": "prefill", "var": "dynamo_serve_prefill_tensor_parallel_size", "tp": 8},
        {"group": "decode", "var": "dynamo_serve_decode_tensor_parallel_size", "tp": 2},
    ]
    # a group without hosts has no worker to plan
    assert [g["group"] for g in groups({**disagg, "dynamo_serve_prefill_hosts": []})] == ["decode"]
    with pytest.raises(AnsibleFilterError, match="give a dict"):
        groups(["not", "a", "mapping"])


def test_validate_plans_every_dynamo_worker_group(tmp_path: Path) -> None:
    """inventories/dynamo (405B FP8, TP 8 per worker) passes with a plan per group; a decode group of TP 4
    does not fit and stops with the numbers and the variable."""
    from ansible_run import ansible_playbook

    ok = ansible_playbook("-i", "inventories/dynamo", "playbooks/validate.yml", "--tags", "validate", timeout=120)
    out = " ".join(ok.stdout.split())
    assert ok.returncode == 0, out[-3000:]
    assert "Dynamo prefill worker: TP 8 on one node" in out and "Dynamo decode worker: TP 8 on one node" in out
    bad = ansible_playbook(
        *("-i", "inventories/dynamo", "playbooks/validate.yml", "--tags", "validate"),
        *("-e", "dynamo_serve_decode_tensor_parallel_size=4"),
        timeout=120,
    )
    out = " ".join(bad.stdout.split())
    assert bad.returncode != 0
    want = "The Dynamo decode worker (dynamo_serve_decode_tensor_parallel_size=4, one replica on 4 GPUs"
    assert want in out, out[-3000:]
    assert "Fix: raise dynamo_serve_decode_tensor_parallel_size (up to validate_gpus_per_node=8)" in out
