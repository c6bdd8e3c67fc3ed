"""The validate phase's checks as one pure function (plugins/module_utils/_validate.py).

The playbook-level suites (test_validate_role.py, test_bad_input.py) run them through the action
plugin; these pin the order of the checks, the report lines and the SLURM plan-only mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ansible_collections.multinode.vllm.plugins.module_utils._validate import Inputs, validate

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
RULES = yaml.safe_load((ROOT / "roles/validate/vars/main.yml").read_text())["_validate_rules"]
DEFAULTS: dict[str, Any] = {}
for role in ("multinode", "vllm_serve", "ray_head", "ray_worker", "cluster_firewall", "model_cache"):
    DEFAULTS.update(yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()) or {})
MODEL_405B = str(ROOT / "tests/fixtures/models/llama-3.1-405b")


def inputs(hostvars: dict[str, dict[str, Any]] | None = None, **kw: Any) -> Inputs:
    hv = hostvars or {"node1": {"ansible_host": "192.0.2.11"}, "node2": {"ansible_host": "192.0.2.12"}}
    groups = {"all": list(hv), "vllm_cluster": list(hv), "ray_head": ["node1"], "ray_workers": list(hv)[1:]}
    values = {"groups": groups, "hostvars": hv, "names": {h: list(v) for h, v in hv.items()}, "undefined": []}
    values.update(rules=RULES, defaults=DEFAULTS, model_config_path=MODEL_405B)
    values.update(kw)
    return Inputs(**values)


def test_a_valid_inventory_passes_with_the_plan() -> None:
    out = validate(inputs())
    assert not out["failed"], out
    assert out["plan"]["tensor_parallel_size"] == 8 and out["plan"]["pipeline_parallel_size"] == 2
    assert out["report"][0].startswith("TP 8 x PP 2 on 2 nodes x 8 GPUs; weights ")


def test_the_first_failing_check_stops_and_is_named() -> None:
    # a bad port and a clash on the same host: the port check comes first
    hv = {
        "node1": {"ansible_host": "192.0.2.11", "multinode_vllm_port": 70000, "multinode_ray_port": 8000},
        "node2": {"ansible_host": "192.0.2.12"},
    }
    out = validate(inputs(hv))
    assert out["failed"] and out["check"] == "Stop if a port is not in 1-65535", out
    assert "multinode_vllm_port=70000 on node1" in out["msg"] and "Fix: set multinode_vllm_port" in out["msg"]
    # the port fixed, the clash is next
    hv["node1"]["multinode_vllm_port"] = 6379
    hv["node1"]["multinode_ray_port"] = 6379
    out = validate(inputs(hv))
    assert out["check"] == "Stop if two services share a port", out
    assert "node1: multinode_vllm_port=6379, multinode_ray_port=6379" in out["msg"]


def test_an_undefined_template_stops_before_the_types() -> None:
    hv = {"node1": {"ansible_host": "192.0.2.11", "multinode_vllm_port": "x"}, "node2": {"ansible_host": "192.0.2.12"}}
    undefined = [{"var": "multinode_api_key", "hosts": ["node1", "node2"], "missing": "vault_api_key"}]
    out = validate(inputs(hv, undefined=undefined))
    assert out["check"] == "Stop if a variable is a template that names an undefined variable", out
    assert out["msg"].startswith("multinode_api_key on node1, node2 names vault_api_key, which is undefined.")


def test_inventory_shape_comes_before_the_variables() -> None:
    hv = {"node1": {"ansible_host": "192.0.2.11", "multinode_vllm_port": 0}, "node2": {"ansible_host": "192.0.2.11"}}
    out = validate(inputs(hv))
    assert out["check"] == "Stop if two hosts share an address", out
    assert "192.0.2.11:22 (node1, node2)" in out["msg"]


def test_a_misspelt_variable_and_an_open_api_are_reported_not_stopped() -> None:
    hv = {
        "node1": {"ansible_host": "192.0.2.11", "vllm_serve_max_num_seq": 4, "multinode_api_open": True},
        "node2": {"ansible_host": "192.0.2.12", "multinode_api_open": True},
    }
    spec = {"argument_specs": {"main": {"options": {"vllm_serve_max_num_seqs": {}}}}}
    out = validate(inputs(hv, specs=[spec], prefixes=["vllm_serve_"]))
    assert not out["failed"], out
    text = " ".join(out["report"])
    assert (
        "no role of multinode.vllm reads vllm_serve_max_num_seq (on node1; did you mean vllm_serve_max_num_seqs?)"
        in text
    )
    assert "WARNING: multinode_api_open is true on node1, node2" in text
    # required key: the same inventory stops
    out = validate(inputs(hv, require_api_key=True))
    assert out["check"] == "Stop if the API is open while a key is required, or open and given a key", out


def test_plan_only_plans_the_given_shape_and_names_its_variables() -> None:
    shape = {
        "model": "meta-llama/Llama-3.1-405B",
        "nodes": 2,
        "gpus_per_node": 8,
        "tp": 8,
        "pp": 2,
        "dp": 1,
        "ep": False,
        "backend": "ray",
        "dtype": "auto",
        "max_model_len": None,
        "utilization": 0.9,
        "nodes_from": "slurm_nodes",
        "gpus_from": "slurm_gpus_per_node",
    }
    # plan only: no inventory at all is needed
    out = validate(plan_only(shape))
    assert not out["failed"] and out["report"][0].startswith("TP 8 x PP 2 on 2 nodes x 8 GPUs"), out
    # a shape the planner refuses names the job's variable, not the inventory's hosts
    out = validate(plan_only({**shape, "nodes": 0}))
    assert out["check"] == "Stop with the planner's objection", out
    assert "Fix: change slurm_nodes in the inventory." in out["msg"]


def plan_only(shape: dict[str, Any]) -> Inputs:
    return Inputs(
        groups={},
        hostvars={},
        names={},
        undefined=[],
        rules={},
        defaults={},
        model_config_path=MODEL_405B,
        plan_only=shape,
    )
