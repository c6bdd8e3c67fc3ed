"""Planner on MoE, MLA and quantized checkpoints; pipeline stages split as vLLM splits them."""

from __future__ import annotations

from pathlib import Path

import pytest
from multinode_vllm.module_utils._planner import (
    GIB,
    PlanError,
    load_config,
    max_context,
    parameter_count,
    plan,
    quantized_weight_bytes,
    stage_layers,
)

MODELS = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models"
H100 = 80 * GIB
H200 = 141 * 10**9


def cfg(name: str) -> dict:
    return load_config(str(MODELS / name))


@pytest.mark.parametrize(
    ("layers", "pp", "expected"),
    # vLLM get_pp_indices: the remainder goes to the stages before the last.
    [(61, 2, [31, 30]), (10, 4, [2, 3, 3, 2]), (126, 2, [63, 63]), (4, 4, [1, 1, 1, 1]), (7, 3, [2, 3, 2])],
)
def test_stage_layers_like_vllm(layers: int, pp: int, expected: list[int]) -> None:
    assert stage_layers(layers, pp) == expected
    assert sum(expected) == layers


def test_mixtral_parameters_and_kv() -> None:
    # Mixtral 8x7B is published as 46.7B parameters.
    params = parameter_count(cfg("mixtral-8x7b"))
    assert 46.6e9 < params < 46.8e9
    result = plan(cfg("mixtral-8x7b"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100, max_model_len=32768)
    # 2 · 32 layers · 8 KV heads · 128 · 2 bytes
    assert result["kv_bytes_per_token"] == 131_072
    assert result["fits"] is True
    assert result["quantization"] is None


def test_deepseek_v3_mla_fp8() -> None:
    config = cfg("deepseek-v3")
    # 671B without the multi-token-prediction layer, as DeepSeek publishes it.
    assert 670.5e9 < parameter_count(config) < 671.5e9
    assert quantized_weight_bytes(config) == ("fp8", 1)
    # one replica over both nodes (DP 1): TP 8 x PP 2
    result = plan(config, nodes=2, gpus_per_node=8, gpu_memory_bytes=H200, max_model_len=32768, data_parallel_size=1)
    # MLA caches one latent of kv_lora_rank + qk_rope_head_dim per layer: 61 · (512 + 64) · 2 bytes.
    assert result["kv_bytes_per_token"] == 61 * 576 * 2 == 70_272
    # FP8 linear layers: the weights are about one byte per parameter, not two.
    assert 0.99 < result["weight_bytes"] / result["parameters"] < 1.01
    assert [s["layers"] for s in result["stages"]] == [31, 30]
    assert result["fits"] is True
    assert max_context(config) == 163_840  # 4096 original × yarn factor 40
    # left to the planner: ~625 GiB of FP8 weights fit one node of 8 H200 (8 x 0.9 x 141 GB = 945 GiB), so it
    # proposes two replicas of TP 8 rather than pipeline stages across the nodes
    proposed = plan(config, nodes=2, gpus_per_node=8, gpu_memory_bytes=H200, max_model_len=32768)
    shape = (proposed["data_parallel_size"], proposed["tensor_parallel_size"], proposed["pipeline_parallel_size"])
    assert shape == (2, 8, 1)
    assert proposed["fits"] is True
    assert "one replica fits on 8 GPUs of a node" in proposed["layout_reason"]


def test_deepseek_v3_on_one_h100_node_does_not_fit() -> None:
    result = plan(cfg("deepseek-v3"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100, max_model_len=8192)
    assert result["fits"] is False
    assert "the weights alone need at least" in result["reason"]
    assert result["min_gpus_for_weights"] > 8


def test_kv_heads_must_divide_or_be_divided_by_tp() -> None:
    config = {**cfg("llama-3.1-8b"), "num_key_value_heads": 8, "num_attention_heads": 48}
    with pytest.raises(PlanError) as err:
        plan(config, nodes=1, gpus_per_node=6, gpu_memory_bytes=H100, tensor_parallel_size=6, pipeline_parallel_size=1)
    assert err.value.variable == "tensor_parallel_size"
    assert "num_key_value_heads=8" in str(err.value)


def test_unknown_quantization_is_counted_at_dtype_and_noted() -> None:
    config = {**cfg("llama-3.1-8b"), "quantization_config": {"quant_method": "mystery"}}
    result = plan(config, nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    assert result["quantization"] is None
    assert result["weight_bytes"] == 2 * result["parameters"]
    assert any("mystery" in n for n in result["notes"])


def test_gptq_4bit_shrinks_linear_weights() -> None:
    config = {**cfg("llama-3.1-70b"), "quantization_config": {"quant_method": "gptq", "bits": 4}}
    dense = plan(cfg("llama-3.1-70b"), nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    quant = plan(config, nodes=1, gpus_per_node=8, gpu_memory_bytes=H100)
    assert quant["quantization"] == "gptq 4-bit"
    # linear layers at half a byte, embeddings/lm_head/norms still at 2 bytes
    assert 0.25 < quant["weight_bytes"] / dense["weight_bytes"] < 0.35
