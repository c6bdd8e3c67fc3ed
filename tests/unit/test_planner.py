"""Planner: hand-computed numbers, refusals, the CLI and the filter through Ansible."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from multinode_vllm.module_utils._planner import (
    GIB,
    PlanError,
    check_parallel,
    default_parallel,
    idle_gpus,
    load_config,
    parallel_shape,
    parameter_count,
    plan,
)

from multinode_vllm.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
H100 = 80 * GIB


def cfg(name: str) -> dict:
    return load_config(str(MODELS / name))


def test_405b_kv_per_token_and_weights() -> None:
    result = plan(cfg("llama-3.1-405b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, dtype="float16")
    # 2 (K and V) · 126 layers · 8 KV heads · 128 head_dim · 2 bytes
    assert result["kv_bytes_per_token"] == 2 * 126 * 8 * 128 * 2 == 516_096
    # per layer: attention 2·16384² + 2·16384·1024 = 570,425,344; MLP 3·16384·53248 = 2,617,245,696;
    # norms 32,768 → 3,187,703,808 × 126 = 401,650,679,808; + embeddings and lm_head 2·128256·16384
    # = 4,202,692,608; + final norm 16,384 → 405,853,388,800 parameters → 811.7 GB in FP16.
    assert result["parameters"] == 405_853_388_800
    assert result["weight_bytes"] == 811_706_777_600
    assert result["tensor_parallel_size"] == 8
    assert result["pipeline_parallel_size"] == 2
    assert result["fits"] is True
    # 72 GiB budget − 47.24 GiB weights − 2 GiB overhead = 22.76 GiB per GPU, × 16 GPUs / 516,096 B
    expected_tokens = (int(H100 * 0.9) - 811_706_777_600 // 16 - 2 * GIB) * 16 // 516_096
    assert result["kv_cache_tokens"] == expected_tokens
    assert 750_000 < expected_tokens < 760_000


def test_405b_does_not_fit_on_one_node() -> None:
    result = plan(cfg("llama-3.1-405b"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    assert result["fits"] is False
    assert result["kv_cache_tokens"] == 0
    assert "94.5 GiB of weights" in result["reason"]
    assert "72.0 GiB" in result["reason"]


def test_70b_fits_on_one_node() -> None:
    result = plan(cfg("llama-3.1-70b"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    assert result["fits"] is True
    # 80 layers · 8 KV heads · 128 · 2 · 2 bytes = 327,680 bytes per token
    assert result["kv_bytes_per_token"] == 327_680
    assert 70.5e9 < result["parameters"] < 70.6e9


def test_8b_parameters() -> None:
    assert 8.0e9 < parameter_count(cfg("llama-3.1-8b")) < 8.04e9


def test_tiny_model_pp2() -> None:
    # data_parallel_size=1: one replica over both nodes (left unset, the planner proposes DP 2, see below)
    result = plan(
        cfg("tiny-llama"), nodes=2, gpus_per_node=1, gpu_memory_bytes=8 * GIB, max_model_len=512, data_parallel_size=1
    )
    assert (result["tensor_parallel_size"], result["pipeline_parallel_size"]) == (1, 2)
    assert result["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 2
    assert result["fits"] is True


@pytest.mark.parametrize(
    ("kwargs", "variable", "fragment"),
    [
        (
            {"tensor_parallel_size": 6, "pipeline_parallel_size": 1, "gpus_per_node": 6},
            "tensor_parallel_size",
            "does not divide num_attention_heads=32",
        ),
        (
            {"tensor_parallel_size": 4, "pipeline_parallel_size": 4},
            "tensor_parallel_size",
            "make the product 8",
        ),
        (
            # mp: vLLM runs on every node and must use every GPU
            {"tensor_parallel_size": 4, "pipeline_parallel_size": 1, "backend": "mp"},
            "tensor_parallel_size",
            "make the product 8",
        ),
        ({"backend": "nccl"}, "backend", "unknown backend 'nccl'"),
        ({"max_model_len": 1_000_000}, "max_model_len", "above the model's maximum 131072"),
        ({"dtype": "int3"}, "dtype", "unknown dtype 'int3'"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization", "must be in (0, 1]"),
        ({"nodes": 0}, "nodes", "positive integer"),
    ],
)
def test_refusals_name_the_variable(kwargs: dict, variable: str, fragment: str) -> None:
    args = {"nodes": 1, "gpus_per_node": 8, "gpu_memory_bytes": H100, **kwargs}
    with pytest.raises(PlanError) as err:
        plan(cfg("llama-3.1-8b"), **args)
    assert err.value.variable == variable
    assert fragment in str(err.value)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"no config\.json"):
        load_config(str(tmp_path))


def test_cli_json_fits(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "plan",
            str(MODELS / "llama-3.1-405b"),
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
            "--gpu-memory-gib",
            "80",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["fits"] is True
    assert out["kv_bytes_per_token"] == 516_096
    assert {"tensor_parallel_size", "pipeline_parallel_size", "weight_bytes", "kv_cache_tokens"} <= set(out)


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(MODELS / "llama-3.1-405b" / "config.json")
    assert main(["plan", model, "--nodes", "1", "--gpus-per-node", "8", "--gpu-memory-gib", "80"]) == 1
    assert "does not fit" in capsys.readouterr().out
    assert (
        main(
            [
                "plan",
                model,
                "--nodes",
                "2",
                "--gpus-per-node",
                "8",
                "--gpu-memory-gib",
                "80",
                "--tensor-parallel-size",
                "3",
            ]
        )
        == 2
    )
    assert "tensor_parallel_size" in capsys.readouterr().err


def test_filter_through_ansible() -> None:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    bin_dir = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    expr = (
        "{{ (model | multinode.vllm.vllm_plan(nodes=2, gpus_per_node=8, gpu_memory_bytes=85899345920))"
        ".kv_bytes_per_token }}"
    )
    proc = subprocess.run(
        [
            str(bin_dir / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            f"msg={expr}",
            "-e",
            f"model={MODELS / 'llama-3.1-405b'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "516096" in proc.stdout
    bad = subprocess.run(
        [
            str(bin_dir / "ansible"),
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            "msg={{ model | multinode.vllm.vllm_plan(nodes=2, gpus_per_node=8, gpu_memory_bytes=1,"
            " tensor_parallel_size=3) }}",
            "-e",
            f"model={MODELS / 'llama-3.1-405b'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert bad.returncode != 0
    assert "tensor_parallel_size: 3 does not divide" in bad.stdout + bad.stderr


# --- the cluster's shape: one rule (check_parallel) for validate, vllm_serve and the planner ---------

OLD_MESSAGE = (
    "vllm_serve_tensor_parallel_size=8 x vllm_serve_pipeline_parallel_size=3 = 24 GPUs, but the cluster has "
    "2 nodes x 8 GPUs = 16. Fix: make the product 16, usually TP = GPUs per node (8) and PP = nodes (2); or correct "
    "validate_gpus_per_node (multinode_ray_num_gpus when the inventory sets it)."
)


@pytest.mark.parametrize("backend", ["ray", "mp"])
def test_more_gpus_than_the_cluster_has_is_refused_with_the_same_message(backend: str) -> None:
    assert check_parallel(8, 3, 2, 8, backend) == OLD_MESSAGE


def test_spare_nodes_are_accepted_with_ray_and_noted() -> None:
    # 8 nodes x 1 GPU serving TP 1 x PP 2: 6 spare Ray nodes
    assert check_parallel(1, 2, 8, 1, "ray") is None
    note = idle_gpus(1, 2, 8, 1, "ray")
    assert note is not None and "6 GPUs stay idle" in note and "uses 2 of the 8 GPUs of the cluster" in note
    assert idle_gpus(1, 8, 8, 1, "ray") is None  # every GPU used
    shape = parallel_shape(1, 2, 8, 1, "ray")
    assert (shape["problem"], shape["gpus_used"], shape["gpus"]) == ("", 2, 8)
    assert "6 GPUs stay idle" in shape["note"]


def test_mp_must_use_every_gpu_and_names_the_variables() -> None:
    problem = check_parallel(1, 2, 8, 1, "mp")
    assert problem is not None
    for text in (
        "vllm_serve_tensor_parallel_size=1 x vllm_serve_pipeline_parallel_size=2 = 2 GPUs",
        "8 nodes x 1 GPUs = 8",
        "multinode_backend=mp",
        "--nnodes 8",
        "make the product 8",
        "multinode_backend=ray",
        "6 GPUs left over",
    ):
        assert text in problem, text
    assert idle_gpus(1, 2, 8, 1, "mp") is None
    assert check_parallel(1, 8, 8, 1, "mp") is None


def test_unset_sizes_default_like_the_roles() -> None:
    assert default_parallel(2, 8) == (8, 2)
    assert default_parallel(2, 8, tp=16) == (16, 1)
    assert default_parallel(8, 1, pp=2) == (1, 2)  # ray: TP within a node, the rest spare
    assert default_parallel(8, 1, "mp", pp=2) == (4, 2)  # mp: every GPU
    assert parallel_shape(None, None, 2, 8)["problem"] == ""


def test_planner_never_picks_more_stages_than_layers() -> None:
    # the tiny model has 2 layers: PP = nodes = 8 would be "8 stages for 2 layers" (one replica: DP 1,
    # as the validate role plans with vllm_serve_data_parallel_size at its default)
    one = {"nodes": 8, "gpus_per_node": 1, "gpu_memory_bytes": 8 * GIB, "data_parallel_size": 1}
    for backend in ("ray", "mp"):
        result = plan(cfg("tiny-llama"), backend=backend, **one)
        assert result["pipeline_parallel_size"] <= 2, backend
        assert result["fits"] is True
    ray = plan(cfg("tiny-llama"), **one)
    assert (ray["tensor_parallel_size"], ray["pipeline_parallel_size"], ray["gpus_used"]) == (1, 2, 2)
    assert any("6 GPUs stay idle" in n for n in ray["notes"])
    mp = plan(cfg("tiny-llama"), backend="mp", **one)
    assert (mp["tensor_parallel_size"], mp["pipeline_parallel_size"], mp["gpus_used"]) == (4, 2, 8)


def test_planner_accepts_spare_gpus_with_ray_and_refuses_them_with_mp() -> None:
    args = {"nodes": 8, "gpus_per_node": 1, "gpu_memory_bytes": 8 * GIB, "tensor_parallel_size": 1}
    result = plan(cfg("tiny-llama"), pipeline_parallel_size=2, **args)
    assert result["fits"] is True and result["gpus_used"] == 2 and result["gpus"] == 8
    with pytest.raises(PlanError, match="must use every GPU") as err:
        plan(cfg("tiny-llama"), pipeline_parallel_size=2, backend="mp", **args)
    assert err.value.variable == "tensor_parallel_size"
    # a pipeline deeper than the model stays refused, whatever the backend
    with pytest.raises(PlanError, match="8 stages for 2 layers"):
        plan(cfg("tiny-llama"), pipeline_parallel_size=8, **args)


# Two wide layers: TP 1 x PP 2 cannot hold them on 4 GiB GPUs, TP 4 x PP 2 (every GPU of 8 nodes) can.
TWO_WIDE_LAYERS = {
    "model_type": "llama",
    "torch_dtype": "bfloat16",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 2,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 4096,
}


def test_planner_prefers_a_shape_that_fits() -> None:
    args = {"nodes": 8, "gpus_per_node": 1, "gpu_memory_bytes": 4 * GIB}
    usual = plan(TWO_WIDE_LAYERS, tensor_parallel_size=1, pipeline_parallel_size=2, **args)
    assert usual["fits"] is False
    for backend in ("ray", "mp"):
        chosen = plan(TWO_WIDE_LAYERS, backend=backend, **args)
        assert (chosen["tensor_parallel_size"], chosen["pipeline_parallel_size"], chosen["fits"]) == (4, 2, True)
    # on 1 x 8 nothing fits: the plan is the usual shape's, with its numbers
    result = plan(cfg("llama-3.1-405b"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    assert (result["tensor_parallel_size"], result["pipeline_parallel_size"], result["fits"]) == (8, 1, False)


def test_parallel_check_filter_through_ansible() -> None:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    bin_dir = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    expr = (
        "{{ [(1 | multinode.vllm.parallel_check(2, nodes=8, gpus_per_node=1)).note,"
        " ('1' | multinode.vllm.parallel_check('2', nodes='8', gpus_per_node=1, backend='mp')).problem] }}"
    )
    proc = subprocess.run(
        [str(bin_dir / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "debug", "-a", f"msg={expr}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "6 GPUs stay idle" in flat and "multinode_backend=mp" in flat
