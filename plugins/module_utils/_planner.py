# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capacity planner: does a model fit a cluster, with TP x PP, weights and KV cache in numbers.

Pure functions, stdlib only: used by the `multinode.vllm.vllm_plan` filter (validate phase) and
by `multinode-vllm plan`. The parameter count is computed from config.json, never looked up.
"""

from __future__ import annotations

import json
import os
from typing import Any

GIB = 1024**3

#: Bytes per element for the dtypes vLLM accepts (`--dtype`, `--kv-cache-dtype`).
DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "float": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "half": 2,
    "fp16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}

#: What vLLM keeps aside per GPU besides weights and KV cache (activations, CUDA graphs, NCCL
#: buffers); vLLM profiles the real value at start-up, the planner uses this budget.
DEFAULT_OVERHEAD_BYTES_PER_GPU = 2 * GIB


class PlanError(ValueError):
    """Invalid planner input; `variable` names the option to change."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def load_config(path: str) -> dict[str, Any]:
    """Read config.json from a file path or a model directory."""
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(cfg_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as exc:
        raise PlanError("model", f"no config.json at {cfg_path}: give a model directory or its config.json") from exc
    except json.JSONDecodeError as exc:
        raise PlanError("model", f"{cfg_path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PlanError("model", f"{cfg_path} does not hold a JSON object")
    # Multimodal configs nest the language model (e.g. Llama 4, Qwen-VL).
    text = data.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in data:
        merged = dict(text)
        merged.setdefault("torch_dtype", data.get("torch_dtype"))
        return merged
    return data


def _int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError("model", f"config.json has no positive integer {key!r} (found {value!r})")
    return value


def _dtype_bytes(dtype: str, config: dict[str, Any], variable: str) -> tuple[str, float]:
    name = str(dtype).lower()
    if name == "auto":
        name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").lower()
        if name == "float32":
            # vLLM serves float32 checkpoints in float16 unless told otherwise.
            name = "float16"
    if name not in DTYPE_BYTES:
        known = ", ".join(["auto", *sorted(DTYPE_BYTES)])
        raise PlanError(variable, f"unknown dtype {dtype!r}: use one of {known}")
    return name, DTYPE_BYTES[name]


def model_shape(config: dict[str, Any]) -> dict[str, int]:
    """The numbers of a decoder-only transformer that matter for memory."""
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(head_dim),
        "num_hidden_layers": _int(config, "num_hidden_layers"),
        "intermediate_size": _int(config, "intermediate_size"),
        "vocab_size": _int(config, "vocab_size"),
        "num_experts": int(experts),
        "max_position_embeddings": _int(config, "max_position_embeddings"),
    }


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a Llama-style decoder (dense or MoE), from its config.json."""
    s = model_shape(config)
    hidden, layers = s["hidden_size"], s["num_hidden_layers"]
    q_out = s["num_attention_heads"] * s["head_dim"]
    kv_out = s["num_key_value_heads"] * s["head_dim"]
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if config.get("attention_bias"):
        attention += q_out + 2 * kv_out + hidden
    mlp_one = 3 * hidden * s["intermediate_size"]
    if config.get("mlp_bias"):
        mlp_one += 2 * s["intermediate_size"] + hidden
    if s["num_experts"]:
        mlp = s["num_experts"] * mlp_one + hidden * s["num_experts"]  # experts + router
    else:
        mlp = mlp_one
    norms = 2 * hidden
    embeddings = s["vocab_size"] * hidden
    lm_head = 0 if config.get("tie_word_embeddings") else s["vocab_size"] * hidden
    return layers * (attention + mlp + norms) + embeddings + lm_head + hidden


def max_context(config: dict[str, Any]) -> int:
    """The longest context the model supports (rope scaling included)."""
    base = _int(config, "max_position_embeddings")
    rope = config.get("rope_scaling") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("yarn", "dynamic", "linear"):
        original = rope.get("original_max_position_embeddings") or base
        return max(base, int(original * float(rope.get("factor", 1))))
    return base


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def plan(
    config: dict[str, Any],
    *,
    nodes: int,
    gpus_per_node: int,
    gpu_memory_bytes: int,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    dtype: str = "auto",
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int | None = None,
    kv_cache_dtype: str = "auto",
    overhead_bytes_per_gpu: int = DEFAULT_OVERHEAD_BYTES_PER_GPU,
) -> dict[str, Any]:
    """Plan a deployment; raise PlanError for invalid input, return `fits` False when it does not fit."""
    for name, value in (
        ("nodes", nodes),
        ("gpus_per_node", gpus_per_node),
        ("gpu_memory_bytes", gpu_memory_bytes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PlanError(name, f"must be a positive integer, got {value!r}")
    if not 0 < float(gpu_memory_utilization) <= 1:
        raise PlanError("gpu_memory_utilization", f"must be in (0, 1], got {gpu_memory_utilization!r}: use e.g. 0.9")
    shape = model_shape(config)
    dtype_name, weight_elem = _dtype_bytes(dtype, config, "dtype")
    kv_name, kv_elem = (
        (dtype_name, weight_elem)
        if kv_cache_dtype == "auto"
        else _dtype_bytes(kv_cache_dtype, config, "kv_cache_dtype")
    )

    tp = gpus_per_node if tensor_parallel_size is None else tensor_parallel_size
    pp = nodes if pipeline_parallel_size is None else pipeline_parallel_size
    gpus = nodes * gpus_per_node
    for name, value in (("tensor_parallel_size", tp), ("pipeline_parallel_size", pp)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise PlanError(name, f"must be a positive integer, got {value!r}")
    if shape["num_attention_heads"] % tp:
        raise PlanError(
            "tensor_parallel_size",
            f"{tp} does not divide num_attention_heads={shape['num_attention_heads']}: "
            f"use one of {_divisors(shape['num_attention_heads'])}",
        )
    if tp * pp != gpus:
        raise PlanError(
            "tensor_parallel_size",
            f"tensor_parallel_size × pipeline_parallel_size = {tp} × {pp} = {tp * pp}, but the cluster has "
            f"{nodes} nodes × {gpus_per_node} GPUs = {gpus}: make the product {gpus} "
            f"(usually TP = GPUs per node = {gpus_per_node}, PP = nodes = {nodes})",
        )
    if pp > shape["num_hidden_layers"]:
        raise PlanError(
            "pipeline_parallel_size",
            f"{pp} stages for {shape['num_hidden_layers']} layers: use at most {shape['num_hidden_layers']}",
        )
    limit = max_context(config)
    seq_len = limit if max_model_len is None else max_model_len
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise PlanError("max_model_len", f"must be a positive integer, got {seq_len!r}")
    if seq_len > limit:
        raise PlanError("max_model_len", f"{seq_len} is above the model's maximum {limit}: use {limit} or less")

    params = parameter_count(config)
    weight_bytes = int(params * weight_elem)
    kv_bytes_per_token = int(
        2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * shape["head_dim"] * kv_elem
    )
    budget = int(gpu_memory_bytes * float(gpu_memory_utilization))
    weights_per_gpu = weight_bytes // (tp * pp)
    kv_per_gpu = budget - weights_per_gpu - overhead_bytes_per_gpu
    kv_total = max(kv_per_gpu, 0) * gpus
    kv_cache_tokens = kv_total // kv_bytes_per_token

    def gib(n: float) -> str:
        return f"{n / GIB:.1f} GiB"

    if kv_per_gpu <= 0:
        fits = False
        reason = (
            f"does not fit: each GPU holds {gib(weights_per_gpu)} of weights + {gib(overhead_bytes_per_gpu)} "
            f"overhead, but its budget is {gib(budget)} ({gpu_memory_utilization} × {gib(gpu_memory_bytes)}); "
            f"add nodes, use GPUs with more memory, or a smaller dtype"
        )
    elif kv_cache_tokens < seq_len:
        fits = False
        reason = (
            f"does not fit: KV cache holds {kv_cache_tokens} tokens, below max_model_len={seq_len} "
            f"({kv_bytes_per_token} bytes/token); lower max_model_len or add GPUs"
        )
    else:
        fits = True
        reason = (
            f"fits: {gib(weights_per_gpu)} weights + {gib(overhead_bytes_per_gpu)} overhead per GPU of a "
            f"{gib(budget)} budget leaves {gib(kv_per_gpu)} per GPU for KV cache: {kv_cache_tokens} tokens, "
            f"{kv_cache_tokens / seq_len:.1f} sequences of {seq_len}"
        )
    return {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "gpus": gpus,
        "dtype": dtype_name,
        "kv_cache_dtype": kv_name,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "weight_bytes_per_gpu": weights_per_gpu,
        "gpu_budget_bytes": budget,
        "overhead_bytes_per_gpu": overhead_bytes_per_gpu,
        "kv_bytes_per_token": kv_bytes_per_token,
        "kv_cache_bytes": kv_total,
        "kv_cache_tokens": kv_cache_tokens,
        "max_model_len": seq_len,
        "max_concurrent_sequences": kv_cache_tokens // seq_len,
        "fits": fits,
        "reason": reason,
    }
