"""The validate role through the real ansible-playbook, on inventories with bad variables.

No node is contacted (the play runs action plugins and lookups only; the addresses below are
never dialled). Every failing case must stop and name the variable to change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import ansible_playbook

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
MODEL_405B = str(ROOT / "tests" / "fixtures" / "models" / "llama-3.1-405b")


def inventory(heads: list[str], workers: list[str], **cluster_vars: Any) -> dict[str, Any]:
    def hosts(names: list[str]) -> dict[str, Any]:
        # 192.0.2.0/24 is TEST-NET-1: never routed, and never dialled by the validate phase
        return {n: {"ansible_host": f"192.0.2.{10 + int(n[-1])}"} for n in names}

    return {
        "all": {
            "children": {
                "vllm_cluster": {
                    "children": {
                        "ray_head": {"hosts": hosts(heads)},
                        "ray_workers": {"hosts": hosts(workers)},
                    },
                    "vars": {"validate_model_config_path": MODEL_405B, **cluster_vars},
                }
            }
        }
    }


def run_validate(tmp_path: Path, inv: dict[str, Any], *extra: str) -> tuple[int, str]:
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inv))
    # --tags validate: the controller play only (the node play would dial the TEST-NET addresses)
    proc = ansible_playbook(
        "-i", str(path), "playbooks/validate.yml", "--tags", "validate", *extra, timeout=120, ANSIBLE_NOCOLOR="1"
    )
    # the yaml callback folds long messages: compare with whitespace collapsed
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_405b_on_two_8xh100_nodes_passes_and_shows_the_plan(tmp_path: Path) -> None:
    rc, out = run_validate(tmp_path, inventory(["node1"], ["node2"]))
    assert rc == 0, out
    # 405B in bf16: 126 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes = 516096 B/token
    assert "TP 8 x PP 2 on 2 nodes x 8 GPUs" in out
    assert "516096 B/token" in out
    assert "failed=0" in out


@pytest.mark.parametrize(
    ("inv", "extra", "expected"),
    [
        pytest.param(
            inventory(["node1", "node2"], ["node3"]),
            {},
            ["Group ray_head (multinode_head_group) holds 2 hosts (node1, node2)", "exactly one"],
            id="two-heads",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"multinode_ray_port": 70000},
            ["Not a port: multinode_ray_port=70000 on node1", "1-65535"],
            id="port-out-of-range",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"multinode_vllm_port": 6379},
            ["Ports clash on node1: multinode_vllm_port=6379, multinode_ray_port=6379"],
            id="ports-clash",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"vllm_serve_tensor_parallel_size": 8, "vllm_serve_pipeline_parallel_size": 3},
            [
                "vllm_serve_tensor_parallel_size=8 x vllm_serve_pipeline_parallel_size=3 = 24 GPUs",
                "2 nodes x 8 GPUs = 16",
            ],
            id="tp-x-pp-mismatch",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"multinode_runtime": "podman", "vllm_serve_gpu_memory_utilization": 1.5},
            ["multinode_runtime=podman on node1, node2 (one of native, docker)"],
            id="unknown-runtime",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"vllm_serve_gpu_memory_utilization": 0.3},
            ["does not fit", "vllm_serve_gpu_memory_utilization=0.3", "validate_ignore_plan=true"],
            id="does-not-fit",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"vllm_serve_max_model_len": 200000},
            ["max_model_len: 200000 is above the model's maximum 131072", "Fix: change vllm_serve_max_model_len"],
            id="planner-refuses",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"vllm_serve_enable_expert_parallel": True},
            [
                "vllm_serve_enable_expert_parallel=true, but the model is dense",
                "Fix: change vllm_serve_enable_expert_parallel",
            ],
            id="expert-parallel-on-a-dense-model",
        ),
        pytest.param(
            # 3 replicas of TP 8 = 24 GPUs on 2 x 8
            inventory(["node1"], ["node2"]),
            {"vllm_serve_data_parallel_size": 3, "vllm_serve_tensor_parallel_size": 8},
            ["3 replicas of 8 GPUs need 24", "set vllm_serve_data_parallel_size to at most 2"],
            id="data-parallel-more-replicas-than-gpus",
        ),
        pytest.param(
            # DP 2: one 405B replica per node, TP 8: 94.5 GiB of weights per GPU
            inventory(["node1"], ["node2"]),
            {"vllm_serve_data_parallel_size": 2},
            [
                "does not fit",
                "94.5 GiB of weights",
                "vllm_serve_data_parallel_size=1 with vllm_serve_pipeline_parallel_size",
            ],
            id="data-parallel-replica-does-not-fit",
        ),
        pytest.param(
            inventory(["node1"], ["node2"]),
            {"vllm_serve_data_parallel_size": 0},
            ["vllm_serve_data_parallel_size=0"],
            id="data-parallel-zero",
        ),
    ],
)
def test_bad_inventory_stops_naming_the_variable(
    tmp_path: Path, inv: dict[str, Any], extra: dict[str, Any], expected: list[str]
) -> None:
    rc, out = run_validate(tmp_path, inv, *(["-e", json.dumps(extra)] if extra else []))
    assert rc == 2, out
    for text in expected:
        assert text in out, f"{text!r} not in output:\n{out[-3000:]}"


def test_mixtral_with_data_and_expert_parallel_passes_and_shows_the_plan(tmp_path: Path) -> None:
    inv = inventory(
        ["node1"],
        ["node2"],
        validate_model_config_path=str(ROOT / "tests" / "fixtures" / "models" / "mixtral-8x7b"),
        vllm_serve_data_parallel_size=2,
        vllm_serve_tensor_parallel_size=4,
        vllm_serve_pipeline_parallel_size=2,
        vllm_serve_enable_expert_parallel=True,
    )
    rc, out = run_validate(tmp_path, inv)
    assert rc == 0, out[-3000:]
    # EP = DP x TP = 8 ranks for 8 experts: one expert per GPU (test_planner_dp_ep has the numbers)
    assert "DP 2 x TP 4 x PP 2 with expert parallel (1 of 8 experts per GPU) on 2 nodes x 8 GPUs" in out
    assert "2 replicas: 8,437,910 tokens in all" in out


def test_escape_hatch_lets_a_plan_that_does_not_fit_through(tmp_path: Path) -> None:
    extra = {"vllm_serve_gpu_memory_utilization": 0.3, "validate_ignore_plan": True}
    rc, out = run_validate(tmp_path, inventory(["node1"], ["node2"]), "-e", json.dumps(extra))
    assert rc == 0, out
    assert "does not fit" in out  # still reported


TINY = str(ROOT / "tests" / "fixtures" / "models" / "tiny-llama")
EIGHT = [f"node{i}" for i in range(2, 9)]


def tiny_on_8x1(**over: Any) -> dict[str, Any]:
    """The 2-layer test model on 8 nodes of 1 GPU (the issue's scale test bed)."""
    values = {
        "multinode_model": "example/tiny",
        "validate_model_config_path": TINY,
        "validate_gpus_per_node": 1,
        "validate_gpu_memory_gib": 8,
        **over,
    }
    return inventory(["node1"], EIGHT, **values)


def test_spare_ray_nodes_pass_with_a_note(tmp_path: Path) -> None:
    inv = tiny_on_8x1(vllm_serve_tensor_parallel_size=1, vllm_serve_pipeline_parallel_size=2)
    rc, out = run_validate(tmp_path, inv)
    assert rc == 0, out[-3000:]
    assert "TP 1 x PP 2 on 8 nodes x 1 GPUs" in out
    assert "uses 2 of the 8 GPUs of the cluster (8 nodes x 1): 6 GPUs stay idle" in out


def test_mp_with_gpus_left_over_stops_naming_the_variables(tmp_path: Path) -> None:
    inv = tiny_on_8x1(vllm_serve_tensor_parallel_size=1, vllm_serve_pipeline_parallel_size=2, multinode_backend="mp")
    rc, out = run_validate(tmp_path, inv)
    assert rc == 2, out[-3000:]
    assert "Stop if tensor x pipeline parallel does not fit the GPUs of the cluster" in out
    for text in (
        "vllm_serve_tensor_parallel_size=1 x vllm_serve_pipeline_parallel_size=2 = 2 GPUs",
        "8 nodes x 1 GPUs = 8",
        "multinode_backend=mp",
        "make the product 8",
    ):
        assert text in out, text


@pytest.mark.parametrize("ignore", [False, True], ids=["planner-chooses", "ignore-plan"])
def test_unset_shape_on_more_nodes_than_layers_is_planned(tmp_path: Path, ignore: bool) -> None:
    # the planner used to pick PP = nodes: "8 stages for 2 layers", even with validate_ignore_plan=true
    rc, out = run_validate(tmp_path, tiny_on_8x1(validate_ignore_plan=ignore))
    assert rc == 0, out[-3000:]
    assert "TP 1 x PP 2 on 8 nodes x 1 GPUs" in out
    assert "stages for 2 layers" not in out


def test_escape_hatch_goes_on_past_a_planner_objection(tmp_path: Path) -> None:
    extra = {"vllm_serve_max_model_len": 200000, "validate_ignore_plan": True}
    rc, out = run_validate(tmp_path, inventory(["node1"], ["node2"]), "-e", json.dumps(extra))
    assert rc == 0, out[-3000:]
    # (the yaml callback doubles the apostrophe of "model's")
    assert "The planner refused the settings: max_model_len: 200000 is above the model" in out
    assert "validate_ignore_plan=true: going on without a plan" in out


def test_escape_hatch_goes_on_past_a_shape_the_cluster_cannot_run(tmp_path: Path) -> None:
    inv = tiny_on_8x1(
        vllm_serve_tensor_parallel_size=1,
        vllm_serve_pipeline_parallel_size=2,
        multinode_backend="mp",
        validate_ignore_plan=True,
    )
    rc, out = run_validate(tmp_path, inv)
    assert rc == 0, out[-3000:]
    assert "validate_ignore_plan=true: going on without a plan" in out


def test_validate_warns_of_an_open_api_and_of_a_misspelt_variable(tmp_path: Path) -> None:
    """Legitimate input that deserves a word: the run goes on, with a WARNING naming the variable."""
    rc, out = run_validate(tmp_path, inventory(["node1"], ["node2"], multinode_api_open=True, vllm_serve_max_num_seq=4))
    assert rc == 0, out[-3000:]
    assert (
        "WARNING: multinode_api_open is true on node1, node2: vLLM serves WITHOUT an API key, and anyone who "
        "reaches port 8000 can use it." in out
    ), out[-3000:]
    assert "WARNING: no role of multinode.vllm reads vllm_serve_max_num_seq (on node1, node2; did you mean " in out
    assert "vllm_serve_max_num_seqs?" in out
    # without them: neither warning
    rc, out = run_validate(tmp_path, inventory(["node1"], ["node2"]))
    assert rc == 0 and "WARNING: multinode_api_open" not in out and "no role of multinode.vllm reads" not in out
