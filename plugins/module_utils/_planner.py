# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capacity planner: does a model fit a cluster, with TP x PP, weights and KV cache in numbers.

Pure functions, stdlib only: used by the `multinode.vllm.vllm_plan` filter (validate phase) and
by `multinode-vllm plan`. The parameter count is computed from config.json, never looked up.

Memory model (per GPU, the way vLLM budgets it):

    budget    = gpu_memory_bytes x gpu_memory_utilization
    weights   = the GPU's share of its pipeline stage: (stage layers + embeddings on the first
                stage + lm_head and final norm on the last) / tensor_parallel_size
    overhead  = overhead_bytes_per_gpu (activations, CUDA graphs, NCCL buffers; vLLM profiles the
                real value at start-up; 2 GiB by default, a parameter)
    KV cache  = budget - weights - overhead

Layers are split over the stages as vLLM does (`get_pp_indices`: the remainder goes to the stages
before the last). A GPU holds the KV cache of its stage's layers and of its share of the KV heads
(replicated when tensor_parallel_size exceeds num_key_value_heads; MLA latents are replicated on
every TP rank), so each stage can hold `free bytes / per-GPU KV bytes per token` tokens and the
cluster holds the smallest of those (vLLM takes the minimum over workers). With balanced stages
this equals the pooled free memory divided by the model's KV bytes per token,
2 x layers x kv_heads x head_dim x dtype bytes.

It fits when every GPU has room left for KV cache and that room holds at least one sequence of
max_model_len tokens.

Data parallel (DP, ``data_parallel_size``): DP replicas of the model, each on TP x PP GPUs within one
node (vLLM places a DP rank's workers on one node), each with the memory above and its own KV cache;
the cluster's KV cache is DP times one replica's. Expert parallel (``enable_expert_parallel``, MoE
models): the routed experts of each MoE layer are split over the DP x TP ranks, a rank holding
ceil(experts / (DP x TP)) of them, while attention, router, shared experts and embeddings stay
sharded by TP and replicated over DP (vLLM's FusedMoE).

The cluster's shape (``check_parallel``, one rule for the validate role, the vllm_serve role and
this planner): TP x PP may never need more GPUs than the cluster has. With the ray backend it may
use fewer (the GPUs left over stay idle in the Ray cluster, spare); with the mp backend it must use
every GPU, because vLLM starts on every node (``--nnodes``) and splits the TP x PP ranks evenly over
the nodes (``local_world_size = world_size // nnodes`` in vLLM's ParallelConfig). With DP > 1 the same
rule holds for DP x TP x PP, and TP x PP must divide a node's GPUs (whole replicas). Where TP or PP is
not given the planner chooses (``parallel_candidates``): TP = GPUs per node and PP = nodes, never
more stages than the model has layers, and a shape that fits before one that does not. With none
of DP, TP and PP given, ``plan`` first tries one replica per node-local TP (smallest first) and DP
over the rest of the GPUs, and falls back to one replica over the nodes (TP within, PP across).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

GIB = 1024**3

#: vLLM's `--dtype` choices: the one vocabulary of the validate phase (vllm_serve_dtype) and the CLI.
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

#: Bytes per element of the dtypes vLLM accepts (`--dtype`, `--kv-cache-dtype`), by every name
#: they go by. `fp8` as a weight dtype means "all weights in 8 bits" (an FP8 checkpoint).
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
    "fp8_e4m3fn": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}

#: Canonical names for the report (aliases fold onto these).
_CANONICAL = {
    "float": "float32",
    "fp32": "float32",
    "bf16": "bfloat16",
    "half": "float16",
    "fp16": "float16",
    "fp8_e4m3fn": "fp8_e4m3",
    "float8_e4m3fn": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2",
}

#: What vLLM keeps aside per GPU besides weights and KV cache (activations, CUDA graphs, NCCL
#: buffers); vLLM profiles the real value at start-up, the planner uses this budget.
DEFAULT_OVERHEAD_BYTES_PER_GPU = 2 * GIB

#: Keys vLLM reads the model's own length limit from (it takes the smallest present).
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


class PlanError(ValueError):
    """Invalid planner input; `variable` names the option to change.

    The message starts with "<variable>: " (the validate role maps that name onto the inventory
    variable to change).
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def load_config(path: str) -> dict[str, Any]:
    """Read config.json from a file path or a model directory."""
    path = os.path.expanduser(str(path))
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(cfg_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as exc:
        raise PlanError("model", f"no config.json at {cfg_path}: give a model directory or its config.json") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError("model", f"cannot read {cfg_path} ({exc}): give a model directory or its config.json") from exc
    except json.JSONDecodeError as exc:
        raise PlanError("model", f"{cfg_path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PlanError("model", f"{cfg_path} does not hold a JSON object")
    return data


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it in text_config)."""
    text = config.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in config:
        merged = dict(text)
        for key in ("torch_dtype", "dtype", "quantization_config", "tie_word_embeddings"):
            if key not in merged and key in config:
                merged[key] = config[key]
        return merged
    return config


def _positive_int(value: Any, variable: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError(variable, f"must be a positive integer, got {value!r}")
    return value


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError("model", f"config.json has no positive integer {key!r} (found {value!r})")
    return value


def dtype_name(dtype: Any, config: dict[str, Any] | None = None, variable: str = "dtype") -> str:
    """Canonical dtype name; `auto` resolves to the config's torch_dtype as vLLM does."""
    name = str(dtype).strip().lower().replace("torch.", "")
    if name == "auto":
        cfg = text_config(config or {})
        name = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").lower().replace("torch.", "")
        if name in ("float32", "float", "fp32"):
            # vLLM serves float32 checkpoints in 16 bits unless told otherwise.
            name = "bfloat16"
    if name not in DTYPE_BYTES:
        known = ", ".join(["auto", *DTYPE_BYTES])
        raise PlanError(variable, f"unknown dtype {dtype!r}: use one of {known}")
    return _CANONICAL.get(name, name)


def quantized_weight_bytes(config: dict[str, Any]) -> tuple[str, float] | None:
    """(method, bytes per weight) of the linear layers of a quantized checkpoint, else None.

    Scales and zero points (a few per 128 weights) are left out: under 2 % of the weights.
    None also for a method the planner does not know: its weights are then counted at dtype,
    which overestimates (the plan errs on the side of "does not fit").
    """
    qc = text_config(config).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method") or "").lower()
    if method in ("fp8", "fbgemm_fp8", "ptpc_fp8", "fp_quant"):
        return method, 1
    if method == "modelopt":
        algo = str(qc.get("quant_algo") or qc.get("quantization", {}).get("quant_algo") or "").upper()
        if "FP8" in algo:
            return f"{method} {algo}", 1
        if "FP4" in algo:
            return f"{method} {algo}", 0.5
        return None
    if method in ("gptq", "awq", "gptq_marlin", "awq_marlin", "auto-round", "autoround"):
        bits = qc.get("bits") or qc.get("w_bit")
        return (f"{method} {bits}-bit", bits / 8) if isinstance(bits, int) and bits > 0 else None
    if method == "bitsandbytes":
        if qc.get("load_in_4bit"):
            return "bitsandbytes 4-bit", 0.5
        if qc.get("load_in_8bit"):
            return "bitsandbytes 8-bit", 1
        return None
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            weights = group.get("weights") if isinstance(group, dict) else None
            bits = weights.get("num_bits") if isinstance(weights, dict) else None
            if isinstance(bits, int) and bits > 0:
                return f"{method} {bits}-bit", bits / 8
    return None


def model_shape(config: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a decoder-only transformer that matter for memory."""
    config = text_config(config)
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads", heads)
    head_dim = _int(config, "head_dim", hidden // heads)
    experts = config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts") or 0
    if heads % kv_heads:
        raise PlanError("model", f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "num_hidden_layers": _int(config, "num_hidden_layers"),
        "intermediate_size": _int(config, "intermediate_size"),
        "vocab_size": _int(config, "vocab_size"),
        "num_experts": int(experts),
        "mla": bool(config.get("kv_lora_rank")),
    }


def _mlp(config: dict[str, Any], hidden: int, intermediate: int) -> tuple[int, int]:
    """(linear, bias) parameters of one gated MLP (gate, up, down)."""
    bias = 2 * intermediate + hidden if config.get("mlp_bias") else 0
    return 3 * hidden * intermediate, bias


def _is_sparse(config: dict[str, Any], s: dict[str, Any], layer: int) -> bool:
    """Whether decoder layer `layer` is a MoE layer (DeepSeek's first dense layers, Qwen's sparse step)."""
    return (
        s["num_experts"] > 0
        and layer >= int(config.get("first_k_dense_replace") or 0)
        and layer not in (config.get("mlp_only_layers") or [])
        and (layer + 1) % int(config.get("decoder_sparse_step") or 1) == 0
        and layer % int(config.get("moe_layer_freq") or 1) == 0
    )


def routed_expert_parameters(config: dict[str, Any], layer: int) -> tuple[int, int]:
    """(linear, bias) parameters of the routed experts of decoder layer `layer`; (0, 0) in a dense layer.

    What expert parallel splits over its ranks; the router and the shared experts stay with the
    dense weights (sharded by TP, replicated over DP), as vLLM's FusedMoE places them.
    """
    config = text_config(config)
    s = model_shape(config)
    if not _is_sparse(config, s, layer):
        return 0, 0
    lin, bias = _mlp(config, s["hidden_size"], config.get("moe_intermediate_size") or s["intermediate_size"])
    return s["num_experts"] * lin, s["num_experts"] * bias


def _layer_parameters(config: dict[str, Any], layer: int) -> tuple[int, int]:
    """(linear, other) parameters of decoder layer `layer`: linear weights are what quantization shrinks."""
    s = model_shape(config)
    hidden, heads = s["hidden_size"], s["num_attention_heads"]
    model_type = str(config.get("model_type") or "")
    linear = other = 0

    if s["mla"]:
        # Multi-head latent attention (DeepSeek V2/V3): low-rank q and compressed kv.
        kv_rank = _int(config, "kv_lora_rank")
        rope_dim = _int(config, "qk_rope_head_dim")
        nope_dim = _int(config, "qk_nope_head_dim")
        v_dim = _int(config, "v_head_dim")
        q_rank = config.get("q_lora_rank")
        q_dim = heads * (nope_dim + rope_dim)
        if q_rank:
            linear += hidden * q_rank + q_rank * q_dim  # q_a_proj, q_b_proj
            other += q_rank  # q_a_layernorm
        else:
            linear += hidden * q_dim
        linear += hidden * (kv_rank + rope_dim)  # kv_a_proj_with_mqa
        other += kv_rank  # kv_a_layernorm
        linear += kv_rank * heads * (nope_dim + v_dim)  # kv_b_proj
        linear += heads * v_dim * hidden  # o_proj
    else:
        q_out = heads * s["head_dim"]
        kv_out = s["num_key_value_heads"] * s["head_dim"]
        linear += hidden * q_out + 2 * hidden * kv_out + q_out * hidden  # q, k, v, o
        if config.get("attention_bias"):
            other += q_out + 2 * kv_out + hidden
        elif model_type.startswith("qwen2") and "attention_bias" not in config:
            other += q_out + 2 * kv_out  # Qwen2 has q/k/v biases and no flag for them
        if model_type.startswith("qwen3"):
            other += 2 * s["head_dim"]  # q_norm, k_norm

    def mlp(intermediate: int) -> tuple[int, int]:
        return _mlp(config, hidden, intermediate)

    experts = s["num_experts"]
    if _is_sparse(config, s, layer):
        expert_size = config.get("moe_intermediate_size") or s["intermediate_size"]
        lin, bias = routed_expert_parameters(config, layer)
        linear += lin
        other += bias
        other += hidden * experts  # router (kept in high precision by quantized checkpoints)
        if config.get("topk_method") == "noaux_tc":
            other += experts  # e_score_correction_bias
        shared = config.get("n_shared_experts")
        if shared:
            lin, bias = mlp(shared * expert_size)
            linear += lin
            other += bias
        shared_size = config.get("shared_expert_intermediate_size")
        if shared_size:
            lin, bias = mlp(shared_size)
            linear += lin
            other += bias + hidden  # shared_expert_gate
    else:
        lin, bias = mlp(s["intermediate_size"])
        linear += lin
        other += bias
    other += 2 * hidden  # input and post-attention RMSNorm
    return linear, other


def parameter_breakdown(config: dict[str, Any]) -> dict[str, Any]:
    """Parameters by place: per decoder layer (linear, other), embeddings, lm_head, final norm."""
    config = text_config(config)
    s = model_shape(config)
    layers = [_layer_parameters(config, i) for i in range(s["num_hidden_layers"])]
    embeddings = s["vocab_size"] * s["hidden_size"]
    return {
        "layers": layers,
        "embeddings": embeddings,
        "lm_head": 0 if config.get("tie_word_embeddings") else embeddings,
        "final_norm": s["hidden_size"],
    }


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer (Llama-style dense, MoE or MLA), from its config.json."""
    b = parameter_breakdown(config)
    return sum(lin + other for lin, other in b["layers"]) + b["embeddings"] + b["lm_head"] + b["final_norm"]


def max_context(config: dict[str, Any]) -> int:
    """The longest context vLLM accepts for the model (rope scaling included, as vLLM derives it)."""
    config = text_config(config)
    found = [v for v in (config.get(k) for k in _MAX_LEN_KEYS) if isinstance(v, int) and not isinstance(v, bool)]
    if not found:
        raise PlanError("model", f"config.json has none of {', '.join(_MAX_LEN_KEYS)}")
    derived: float = min(found)
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if isinstance(rope, dict) and "gemma3" not in str(config.get("model_type") or ""):
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        # llama3 and longrope configs state the extended length in max_position_embeddings already.
        if rope_type not in ("su", "longrope", "llama3"):
            if rope_type == "yarn" and rope.get("original_max_position_embeddings"):
                derived = rope["original_max_position_embeddings"]
            derived *= float(rope.get("factor") or 1)
    return int(derived)


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Decoder layers per pipeline stage, split as vLLM's get_pp_indices does."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


#: The names the shape rule's messages give: the inventory's variables (validate and vllm_serve
#: roles). The planner's own callers (the CLI) pass PLANNER_NAMES.
PARALLEL_NAMES = {
    "tp": "vllm_serve_tensor_parallel_size",
    "pp": "vllm_serve_pipeline_parallel_size",
    "dp": "vllm_serve_data_parallel_size",
    "ep": "vllm_serve_enable_expert_parallel",
    "backend": "multinode_backend",
    "gpus": "validate_gpus_per_node (multinode_ray_num_gpus when the inventory sets it)",
}
PLANNER_NAMES = {
    "tp": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "dp": "data_parallel_size",
    "ep": "enable_expert_parallel",
    "backend": "backend",
    "gpus": "gpus_per_node",
}
BACKENDS = ("ray", "mp")


def check_parallel(
    tp: int,
    pp: int,
    nodes: int,
    gpus_per_node: int,
    backend: str = "ray",
    names: dict[str, str] | None = None,
    dp: int = 1,
) -> str | None:
    """What is wrong with running DP x TP x PP on ``nodes`` x ``gpus_per_node`` GPUs, or None.

    More GPUs than the cluster has: refused for both backends. Fewer: fine with ``ray`` (see
    ``idle_gpus``), refused with ``mp`` (vLLM runs on every node and must use every GPU).
    With DP > 1 every replica (TP x PP GPUs) lies whole within one node, as vLLM places a data
    parallel rank's workers (``--data-parallel-size-local`` engines per node with mp, one
    placement group per rank with ray): TP x PP must divide the GPUs of a node.
    """
    n = {**PARALLEL_NAMES, **(names or {})}
    gpus = nodes * gpus_per_node
    if dp > 1:
        return _check_data_parallel(tp, pp, nodes, gpus_per_node, backend, n, dp)
    need = tp * pp
    shape = (
        f"{n['tp']}={tp} x {n['pp']}={pp} = {need} GPUs, but the cluster has {nodes} nodes x {gpus_per_node} GPUs "
        f"= {gpus}"
    )
    usual = f"usually TP = GPUs per node ({gpus_per_node}) and PP = nodes ({nodes})"
    if need > gpus:
        return f"{shape}. Fix: make the product {gpus}, {usual}; or correct {n['gpus']}."
    if need < gpus and backend == "mp":
        return (
            f"{shape}, and with {n['backend']}=mp vLLM runs on every node (--nnodes {nodes}) and must use every "
            f"GPU. Fix: make the product {gpus}, {usual}; or set {n['backend']}=ray, where the {gpus - need} GPUs "
            f"left over stay idle as spare Ray capacity; or correct {n['gpus']}."
        )
    return None


def _check_data_parallel(
    tp: int, pp: int, nodes: int, gpus_per_node: int, backend: str, n: dict[str, str], dp: int
) -> str | None:
    """check_parallel's rule for DP > 1: whole replicas within a node, DP x TP x PP within the GPUs."""
    gpus = nodes * gpus_per_node
    replica = tp * pp
    shape = (
        f"{n['dp']}={dp} x {n['tp']}={tp} x {n['pp']}={pp} = {dp * replica} GPUs on {nodes} nodes x "
        f"{gpus_per_node} GPUs = {gpus}"
    )
    if replica > gpus_per_node:
        return (
            f"{shape}: a replica (TP x PP = {replica} GPUs) is wider than a node ({gpus_per_node} GPUs), and with "
            f"data parallel each replica runs whole on one node. Fix: make {n['tp']} x {n['pp']} one of "
            f"{_divisors(gpus_per_node)} (usually TP = {gpus_per_node}, PP = 1); or set {n['dp']}=1 and spread "
            f"one replica over the nodes with {n['pp']}."
        )
    if gpus_per_node % replica:
        return (
            f"{shape}: a node's {gpus_per_node} GPUs do not hold whole replicas of TP x PP = {replica} GPUs. "
            f"Fix: make {n['tp']} x {n['pp']} one of {_divisors(gpus_per_node)}."
        )
    most = gpus // replica
    if dp > most:
        return (
            f"{shape}: {dp} replicas of {replica} GPUs need {dp * replica}, more than the cluster has. Fix: set "
            f"{n['dp']} to at most {most} (whole replicas of {replica} GPUs); or correct {n['gpus']}."
        )
    if dp < most and backend == "mp":
        return (
            f"{shape}: with {n['backend']}=mp every node runs the same number of engines "
            f"(--data-parallel-size-local) and must use every GPU. Fix: set {n['dp']}={most} "
            f"({most // nodes} replicas per node); or set {n['backend']}=ray, where the {gpus - dp * replica} GPUs "
            f"left over stay idle as spare Ray capacity."
        )
    return None


def idle_gpus(
    tp: int,
    pp: int,
    nodes: int,
    gpus_per_node: int,
    backend: str = "ray",
    names: dict[str, str] | None = None,
    dp: int = 1,
) -> str | None:
    """A note when DP x TP x PP leaves GPUs of the cluster idle (ray backend), else None."""
    n = {**PARALLEL_NAMES, **(names or {})}
    gpus = nodes * gpus_per_node
    need = dp * tp * pp
    if need >= gpus or backend == "mp":
        return None
    used = f"{n['dp']}={dp} x " if dp > 1 else ""
    return (
        f"{used}{n['tp']}={tp} x {n['pp']}={pp} uses {need} of the {gpus} GPUs of the cluster ({nodes} nodes x "
        f"{gpus_per_node}): {gpus - need} GPUs stay idle, spare capacity in the Ray cluster ({n['backend']}=ray)"
    )


def default_parallel(
    nodes: int,
    gpus_per_node: int,
    backend: str = "ray",
    tp: int | None = None,
    pp: int | None = None,
    dp: int = 1,
) -> tuple[int, int]:
    """TP and PP where the caller leaves them unset (None), knowing nothing of the model.

    Both unset: TP = GPUs per node, PP = nodes. TP alone: the stages the GPUs make (at least 1).
    PP alone: TP = GPUs per node, or with mp the TP that uses every GPU.
    With DP > 1 (replicas within a node): PP = 1 unless given, and TP the largest that makes whole
    replicas on a node with the DP x TP x PP GPUs the cluster has (1 when none does).
    """
    gpus = nodes * gpus_per_node
    if dp > 1:
        stages = 1 if pp is None else pp
        if tp is None:
            tp = next(
                (
                    t
                    for t in range(gpus_per_node, 0, -1)
                    if gpus_per_node % (t * stages) == 0 and dp * t * stages <= gpus
                ),
                1,
            )
        return tp, stages
    if tp is None:
        full = pp is not None and backend == "mp" and gpus % pp == 0
        return (gpus // pp if full and pp else gpus_per_node), (nodes if pp is None else pp)
    if pp is None:
        return tp, max(1, gpus // tp)
    return tp, pp


def parallel_shape(
    tp: int | None,
    pp: int | None,
    nodes: int,
    gpus_per_node: int,
    backend: str = "ray",
    names: dict[str, str] | None = None,
    dp: int = 1,
) -> dict[str, Any]:
    """The shape DP x TP x PP takes on the cluster (unset ones as ``default_parallel`` chooses), and its verdict.

    ``problem``: ``check_parallel``'s text, "" when the shape is fine; ``note``: ``idle_gpus``, "" when
    every GPU is used.
    """
    tp, pp = default_parallel(nodes, gpus_per_node, backend, tp, pp, dp)
    return {
        "data_parallel_size": dp,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "gpus": nodes * gpus_per_node,
        "gpus_used": dp * tp * pp,
        "problem": check_parallel(tp, pp, nodes, gpus_per_node, backend, names, dp) or "",
        "note": idle_gpus(tp, pp, nodes, gpus_per_node, backend, names, dp) or "",
    }


def _tp_fits_heads(tp: int, shape: dict[str, Any]) -> bool:
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    return heads % tp == 0 and (shape["mla"] or kv_heads % tp == 0 or tp % kv_heads == 0)


def parallel_candidates(
    shape: dict[str, Any],
    nodes: int,
    gpus_per_node: int,
    backend: str = "ray",
    tp: int | None = None,
    pp: int | None = None,
    dp: int = 1,
) -> list[tuple[int, int]]:
    """The (TP, PP) shapes to try, best first: the first is the usual one (its errors are the plan's).

    What the caller gives stays. The usual shape (``default_parallel``) never has more stages than
    the model has layers (ray: PP capped at num_hidden_layers). When both are unset, the shapes that
    use every GPU with at most one stage per layer follow (TP across nodes, most stages first), so
    that the planner can prefer one that fits; with mp they are the only ones allowed. With DP > 1
    the one shape of whole replicas on a node (``default_parallel``).
    """
    if dp > 1:
        return [default_parallel(nodes, gpus_per_node, backend, tp, pp, dp)]
    layers = shape["num_hidden_layers"]
    gpus = nodes * gpus_per_node
    first_tp, first_pp = default_parallel(nodes, gpus_per_node, backend, tp, pp)
    if pp is None and backend != "mp":
        first_pp = max(1, min(first_pp, layers))
    candidates = [(first_tp, first_pp)]
    if tp is None and pp is None:
        for stages in range(min(layers, gpus), 0, -1):
            pair = (gpus // stages, stages)
            if gpus % stages == 0 and _tp_fits_heads(pair[0], shape) and pair not in candidates:
                candidates.append(pair)
    return candidates


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


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
    data_parallel_size: int | None = None,
    enable_expert_parallel: bool = False,
    kv_cache_dtype: str = "auto",
    overhead_bytes_per_gpu: int = DEFAULT_OVERHEAD_BYTES_PER_GPU,
    backend: str = "ray",
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Plan a deployment; raise PlanError for invalid input, return `fits` False when it does not fit.

    ``backend`` (ray or mp) decides whether DP x TP x PP may leave GPUs idle (``check_parallel``).
    Where TP or PP is None the planner chooses (``parallel_candidates``), preferring a shape that
    fits. With none of DP, TP and PP given it proposes the layout (``layout_reason`` says why): the
    smallest TP within a node that holds one replica, and as many replicas (DP) as the GPUs make;
    when no replica fits on a node, one replica over the nodes, TP within a node and PP across them.
    ``enable_expert_parallel`` (MoE models only) splits the routed experts over the DP x TP ranks.
    ``names``: what the shape's messages call TP, PP, DP, EP, the backend and the GPUs (PLANNER_NAMES).
    """
    config = text_config(config)
    nodes = _positive_int(nodes, "nodes")
    gpus_per_node = _positive_int(gpus_per_node, "gpus_per_node")
    gpu_memory_bytes = _positive_int(gpu_memory_bytes, "gpu_memory_bytes")
    if (
        isinstance(overhead_bytes_per_gpu, bool)
        or not isinstance(overhead_bytes_per_gpu, int)
        or overhead_bytes_per_gpu < 0
    ):
        raise PlanError("overhead_bytes_per_gpu", f"must be an integer >= 0, got {overhead_bytes_per_gpu!r}")
    try:
        utilization = float(gpu_memory_utilization)
    except (TypeError, ValueError):
        utilization = -1.0
    if not 0 < utilization <= 1:
        raise PlanError("gpu_memory_utilization", f"must be in (0, 1], got {gpu_memory_utilization!r}: use e.g. 0.9")

    shape = model_shape(config)
    weight_dtype = dtype_name(dtype, config, "dtype")
    kv_dtype = (
        weight_dtype if str(kv_cache_dtype).lower() == "auto" else dtype_name(kv_cache_dtype, None, "kv_cache_dtype")
    )

    if backend not in BACKENDS:
        raise PlanError("backend", f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    n = {**PLANNER_NAMES, **(names or {})}
    if not isinstance(enable_expert_parallel, bool):
        raise PlanError("enable_expert_parallel", f"must be true or false, got {enable_expert_parallel!r}")
    if enable_expert_parallel and not shape["num_experts"]:
        raise PlanError(
            "enable_expert_parallel",
            f"{n['ep']}=true, but the model is dense (its config.json has no num_local_experts, num_experts or "
            f"n_routed_experts): expert parallel splits the experts of a MoE model. Fix: set {n['ep']}=false",
        )
    tp_given = None if tensor_parallel_size is None else _positive_int(tensor_parallel_size, "tensor_parallel_size")
    pp_given = (
        None if pipeline_parallel_size is None else _positive_int(pipeline_parallel_size, "pipeline_parallel_size")
    )
    dp_given = None if data_parallel_size is None else _positive_int(data_parallel_size, "data_parallel_size")
    common: dict[str, Any] = {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "backend": backend,
        "ep": enable_expert_parallel,
        "gpu_memory_bytes": gpu_memory_bytes,
        "utilization": utilization,
        "max_model_len": max_model_len,
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
        "overhead_bytes_per_gpu": overhead_bytes_per_gpu,
        "names": {**PLANNER_NAMES, **(names or {})},
    }

    proposing = tp_given is None and pp_given is None and dp_given is None
    replica_tried: dict[str, Any] | None = None
    too_many_ranks = False
    if proposing:
        # A replica within one node, with the fewest GPUs that hold it: then DP makes replicas of the rest.
        for tp in range(1, gpus_per_node + 1):
            dp = nodes * gpus_per_node // tp
            if gpus_per_node % tp or not _tp_fits_heads(tp, shape):
                continue
            if enable_expert_parallel and dp * tp > shape["num_experts"]:
                too_many_ranks = True
                continue
            try:
                result = _plan_shape(config, shape, tp=tp, pp=1, dp=dp, blamed="tensor_parallel_size", **common)
            except PlanError:
                continue
            if result["fits"]:
                result["layout_reason"] = (
                    f"proposed: one replica fits on {tp} GPU{'s' if tp > 1 else ''} of a node "
                    f"({n['tp']}={tp}, the smallest that holds the weights and a {result['max_model_len']:,}-token "
                    f"sequence), so the {nodes * gpus_per_node} GPUs serve {dp} replicas ({n['dp']}={dp}): data "
                    f"parallel multiplies throughput and no request waits on another node; pipeline stages would "
                    f"only add hops"
                )
                return result
            replica_tried = result  # the widest replica a node holds: the one that came closest

    dp = 1 if dp_given is None else dp_given
    # The shape the caller left open: the first candidate that fits, else the first that plans at all.
    blamed = "pipeline_parallel_size" if tp_given is None and pp_given is not None else "tensor_parallel_size"
    planned: list[dict[str, Any]] = []
    first_error: PlanError | None = None
    chosen: dict[str, Any] | None = None
    for tp, pp in parallel_candidates(shape, nodes, gpus_per_node, backend, tp_given, pp_given, dp):
        try:
            result = _plan_shape(config, shape, tp=tp, pp=pp, dp=dp, blamed=blamed, **common)
        except PlanError as exc:
            first_error = first_error or exc
            continue
        if result["fits"]:
            chosen = result
            break
        planned.append(result)
    if chosen is None and planned:
        chosen = planned[0]
    if chosen is None:
        if first_error is None:  # parallel_candidates always yields one shape
            raise PlanError("model", "no tensor x pipeline parallel shape to plan")
        raise first_error
    if proposing:
        why = "no TP within a node holds one replica"
        if replica_tried is None and too_many_ranks:
            why = (
                f"replicas on every GPU would make {nodes * gpus_per_node} expert-parallel ranks (DP x TP) for "
                f"the model's {shape['num_experts']} experts"
            )
        elif replica_tried is not None:
            why = (
                f"one replica does not fit on a node's {gpus_per_node} GPUs ({n['tp']}="
                f"{replica_tried['tensor_parallel_size']}: {_gib(replica_tried['weight_bytes_per_gpu'])} of weights "
                f"per GPU of a {_gib(replica_tried['gpu_budget_bytes'])} budget, KV cache for "
                f"{replica_tried['kv_cache_tokens']:,} tokens, max_model_len {replica_tried['max_model_len']:,})"
            )
        chosen["layout_reason"] = (
            f"proposed: {why}; so one replica spans the nodes: {n['tp']}={chosen['tensor_parallel_size']} "
            f"within a node and {n['pp']}={chosen['pipeline_parallel_size']} stages across them"
        )
    else:
        chosen["layout_reason"] = "as given" + (
            "" if tp_given is not None and pp_given is not None else " (unset sizes as the roles default them)"
        )
    return chosen


def _plan_shape(
    config: dict[str, Any],
    shape: dict[str, Any],
    *,
    tp: int,
    pp: int,
    dp: int,
    ep: bool,
    nodes: int,
    gpus_per_node: int,
    backend: str,
    blamed: str,
    gpu_memory_bytes: int,
    utilization: float,
    max_model_len: int | None,
    weight_dtype: str,
    kv_dtype: str,
    overhead_bytes_per_gpu: int,
    names: dict[str, str],
) -> dict[str, Any]:
    """The plan of one DP x TP x PP shape (plan's inputs already checked); the memory is one replica's."""
    dense_bytes = DTYPE_BYTES[weight_dtype]
    kv_elem = DTYPE_BYTES[kv_dtype]
    quant = quantized_weight_bytes(config)
    linear_bytes = min(quant[1], dense_bytes) if quant else dense_bytes
    heads, kv_heads, layers = shape["num_attention_heads"], shape["num_key_value_heads"], shape["num_hidden_layers"]
    gpus = nodes * gpus_per_node
    if heads % tp:
        raise PlanError(
            "tensor_parallel_size",
            f"{tp} does not divide num_attention_heads={heads}: use one of {_divisors(heads)}",
        )
    if not shape["mla"] and kv_heads % tp and tp % kv_heads:
        raise PlanError(
            "tensor_parallel_size",
            f"{tp} neither divides nor is a multiple of num_key_value_heads={kv_heads}: "
            f"use a divisor of {kv_heads} or a multiple of it that divides {heads}",
        )
    problem = check_parallel(tp, pp, nodes, gpus_per_node, backend, names, dp)
    if problem:
        if dp > 1 and gpus_per_node % (tp * pp) == 0:
            blamed = "data_parallel_size"  # whole replicas on a node, but too many or (mp) too few of them
        raise PlanError(blamed, problem)
    if pp > layers:
        raise PlanError("pipeline_parallel_size", f"{pp} stages for {layers} layers: use at most {layers}")
    experts = shape["num_experts"]
    ep_size = dp * tp if ep else 1
    if ep and ep_size > experts:
        raise PlanError(
            "enable_expert_parallel",
            f"expert parallel splits the {experts} experts of each MoE layer over {names['dp']} x {names['tp']} = "
            f"{dp} x {tp} = {ep_size} ranks: {ep_size - experts} ranks would hold no expert. Fix: make "
            f"{names['dp']} x {names['tp']} at most {experts} (e.g. fewer, wider replicas, or pipeline stages); or "
            f"set {names['ep']}=false to shard every expert over TP instead",
        )
    # Expert parallel: a rank holds ceil(E / EP) of each MoE layer's experts (vLLM gives the remainder
    # to the first ranks), so the fullest rank bounds the plan.
    experts_per_rank = -(-experts // ep_size) if ep else experts
    limit = max_context(config)
    seq_len = limit if max_model_len is None else _positive_int(max_model_len, "max_model_len")
    if seq_len > limit:
        raise PlanError("max_model_len", f"{seq_len} is above the model's maximum {limit}: use {limit} or less")

    # Weights: linear layers at the quantized width when the checkpoint is quantized, the rest at dtype.
    b = parameter_breakdown(config)
    params = parameter_count(config)
    layer_bytes = [lin * linear_bytes + other * dense_bytes for lin, other in b["layers"]]
    # The routed experts' share of each layer: split over EP ranks under expert parallel, over TP otherwise.
    expert_bytes = []
    for index in range(layers):
        lin, other = routed_expert_parameters(config, index)
        expert_bytes.append(lin * linear_bytes + other * dense_bytes)
    weight_bytes = int(sum(layer_bytes) + (b["embeddings"] + b["lm_head"] + b["final_norm"]) * dense_bytes)

    # KV cache per token: the whole model, and one GPU's share of one layer.
    if shape["mla"]:
        latent = _int(config, "kv_lora_rank") + _int(config, "qk_rope_head_dim")
        kv_bytes_per_token = int(layers * latent * kv_elem)
        kv_layer_gpu = latent * kv_elem  # the latent is replicated on every TP rank
    else:
        kv_bytes_per_token = int(2 * layers * kv_heads * shape["head_dim"] * kv_elem)
        kv_layer_gpu = 2 * max(kv_heads // tp, 1) * shape["head_dim"] * kv_elem

    budget = int(gpu_memory_bytes * utilization)
    parts = stage_layers(layers, pp)
    stages: list[dict[str, Any]] = []
    start = 0
    for index, count in enumerate(parts):
        stage_bytes = sum(layer_bytes[start : start + count])
        if index == 0:
            stage_bytes += b["embeddings"] * dense_bytes
        if index == pp - 1:
            # Tied embeddings still need their own copy on the last stage when PP > 1.
            head = b["lm_head"] or (b["embeddings"] if pp > 1 else 0)
            stage_bytes += (head + b["final_norm"]) * dense_bytes
        if ep:
            stage_experts = sum(expert_bytes[start : start + count])
            per_gpu = math.ceil((stage_bytes - stage_experts) / tp) + math.ceil(
                stage_experts * experts_per_rank / experts
            )
        else:
            per_gpu = math.ceil(stage_bytes / tp)
        free = budget - per_gpu - overhead_bytes_per_gpu
        per_token_gpu = int(count * kv_layer_gpu)
        stages.append(
            {
                "layers": count,
                "weight_bytes_per_gpu": per_gpu,
                "kv_cache_bytes_per_gpu": max(free, 0),
                "kv_bytes_per_token_per_gpu": per_token_gpu,
                "kv_cache_tokens": max(free, 0) // per_token_gpu,
            }
        )
        start += count

    worst = max(stages, key=lambda st: st["weight_bytes_per_gpu"])
    binding = min(stages, key=lambda st: st["kv_cache_tokens"])
    weights_per_gpu = worst["weight_bytes_per_gpu"]
    kv_cache_tokens = min(st["kv_cache_tokens"] for st in stages)
    # Every replica holds its own KV cache: the cluster's is DP times one replica's.
    kv_total = sum(st["kv_cache_bytes_per_gpu"] for st in stages) * tp * dp
    # Smallest number of these GPUs that holds the weights at all (even split, same overhead).
    room = budget - overhead_bytes_per_gpu
    min_gpus = math.ceil(weight_bytes / room) if room > 0 else None
    where = f"each GPU of stage {stages.index(worst) + 1} of {pp}" if pp > 1 else "each GPU"

    # What would help, in the order people reach for it; only the remedies that can work.
    remedies = []
    if dp > 1:
        if tp * pp < gpus_per_node:
            remedies.append(f"fewer, wider replicas (a larger {names['tp']}, a smaller {names['dp']})")
        else:
            remedies.append(f"{names['dp']}=1 with {names['pp']} stages across the nodes")
    if experts and not ep and dp > 1:
        remedies.append(f"{names['ep']}=true (experts split over the {dp * tp} DP x TP ranks)")
    remedies += ["add nodes", "use GPUs with more memory"]
    if utilization < 0.95:
        remedies.append("raise gpu_memory_utilization")
    if dense_bytes > 1:
        remedies.append("use a smaller dtype or a quantized checkpoint")
    if weights_per_gpu + overhead_bytes_per_gpu >= budget:
        fits = False
        need = weights_per_gpu + overhead_bytes_per_gpu
        if min_gpus:
            min_nodes = math.ceil(min_gpus / gpus_per_node)
            hint = f"the weights alone need at least {min_gpus} such GPUs ({min_nodes} nodes × {gpus_per_node})"
        else:
            hint = "the overhead alone exceeds the budget"
        reason = (
            f"does not fit: {where} needs {_gib(weights_per_gpu)} of weights + {_gib(overhead_bytes_per_gpu)} "
            f"overhead = {_gib(need)}, but its budget is {_gib(budget)} "
            f"({utilization:g} × {_gib(gpu_memory_bytes)}), {_gib(need - budget)} short; {hint}: "
            f"{', '.join(remedies)}"
        )
    elif kv_cache_tokens < seq_len:
        fits = False
        reason = (
            f"does not fit: {_gib(weights_per_gpu)} of weights + {_gib(overhead_bytes_per_gpu)} overhead leave "
            f"{_gib(binding['kv_cache_bytes_per_gpu'])} per GPU of a {_gib(budget)} budget, KV cache for "
            f"{kv_cache_tokens:,} tokens ({kv_bytes_per_token:,} bytes/token), below max_model_len={seq_len:,}: "
            f"lower max_model_len to {kv_cache_tokens:,} or less, {', '.join(remedies)}"
        )
    else:
        fits = True
        reason = (
            f"fits: {_gib(weights_per_gpu)} of weights + {_gib(overhead_bytes_per_gpu)} overhead per GPU of a "
            f"{_gib(budget)} budget ({utilization:g} × {_gib(gpu_memory_bytes)}) leave "
            f"{_gib(worst['kv_cache_bytes_per_gpu'])} per GPU for KV cache: {kv_cache_tokens:,} tokens, "
            f"{kv_cache_tokens / seq_len:.1f} sequences of {seq_len:,}"
        )
        if dp > 1:
            reason += f" per replica, {dp} replicas: {dp * kv_cache_tokens:,} tokens in all"
    notes = []
    idle = idle_gpus(tp, pp, nodes, gpus_per_node, backend, names, dp)
    if idle:
        notes.append(idle)
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and quant is None:
        notes.append(
            f"quantization {qc.get('quant_method')!r} is unknown to the planner: weights counted at {weight_dtype}"
        )
    return {
        "data_parallel_size": dp,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "enable_expert_parallel": ep,
        # EP ranks (DP x TP) and the routed experts per MoE layer the fullest rank holds; 0 when dense.
        "expert_parallel_size": ep_size if ep else None,
        "num_experts": experts,
        "experts_per_gpu": experts_per_rank,
        "gpus": gpus,
        "gpus_per_replica": tp * pp,
        "gpus_used": dp * tp * pp,
        "backend": backend,
        "dtype": weight_dtype,
        "quantization": quant[0] if quant else None,
        "kv_cache_dtype": kv_dtype,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "weight_bytes_per_gpu": weights_per_gpu,
        "gpu_budget_bytes": budget,
        "overhead_bytes_per_gpu": overhead_bytes_per_gpu,
        "kv_bytes_per_token": kv_bytes_per_token,
        "kv_cache_bytes": kv_total,
        # One replica's KV cache (what a sequence can use), and the cluster's over every replica.
        "kv_cache_tokens": kv_cache_tokens,
        "kv_cache_tokens_total": kv_cache_tokens * dp,
        "max_model_len": seq_len,
        "model_max_len": limit,
        "max_concurrent_sequences": kv_cache_tokens // seq_len * dp,
        "min_gpus_for_weights": min_gpus,
        "stages": stages,
        "fits": fits,
        "reason": reason,
        "notes": notes,
    }
