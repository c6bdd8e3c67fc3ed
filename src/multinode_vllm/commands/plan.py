"""`multinode-vllm plan`: does a model fit the cluster? DP x TP x PP (and EP), weights and KV cache in numbers."""

from __future__ import annotations

import argparse
import json
import math
import sys

from multinode_vllm.module_utils._planner import GIB, VLLM_DTYPES, PlanError, load_config, plan


def _number(kind: type, low: float, high: float | None = None, what: str = "") -> object:
    """An argparse type: a finite number in [low, high] (NaN, inf and negatives get a clear message)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"in {low}-{high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r}: give {what} {bounds}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="check DP x TP x PP and weights + KV cache against the cluster before touching any host",
        description=(
            "Plan a deployment from a model's config.json. With none of --data-parallel-size, "
            "--tensor-parallel-size and --pipeline-parallel-size the planner proposes the layout and says why. "
            "Exit 0: fits; 1: does not fit; 2: bad input."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a config.json or a model directory holding one")
    count = _number(int, 1, what="a whole number")
    p.add_argument("--nodes", type=count, required=True)
    p.add_argument("--gpus-per-node", type=count, required=True)
    p.add_argument(
        "--gpu-memory-gib",
        type=_number(float, 0.001, what="a number of GiB"),
        required=True,
        help="memory of one GPU in GiB (80 for H100)",
    )
    p.add_argument("--gpu-memory-utilization", type=_number(float, 0.01, 1.0, what="a fraction"), default=0.9)
    p.add_argument("--max-model-len", type=count)
    p.add_argument("--dtype", default="auto", choices=VLLM_DTYPES, help="vLLM's --dtype (as vllm_serve_dtype)")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=count)
    p.add_argument("--pipeline-parallel-size", type=count)
    p.add_argument(
        "--data-parallel-size",
        type=count,
        help="replicas of the model (each TP x PP GPUs within one node); as vllm_serve_data_parallel_size",
    )
    p.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="MoE models: split the experts over the DP x TP ranks (as vllm_serve_enable_expert_parallel)",
    )
    p.add_argument(
        "--backend",
        choices=["ray", "mp"],
        default="ray",
        help="ray may leave GPUs idle (spare); mp must use every GPU (default: ray)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = plan(
            load_config(args.model),
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            gpu_memory_bytes=int(args.gpu_memory_gib * GIB),
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            data_parallel_size=args.data_parallel_size,
            enable_expert_parallel=args.enable_expert_parallel,
            backend=args.backend,
        )
    except PlanError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "variable": exc.variable}))
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        dp = result["data_parallel_size"]
        rows = [
            (
                "data × tensor × pipeline",
                f"{dp} × {result['tensor_parallel_size']} × {result['pipeline_parallel_size']} "
                f"= {result['gpus_used']} of {result['gpus']} GPUs",
            ),
        ]
        if result["enable_expert_parallel"]:
            rows.append(
                (
                    "expert parallel",
                    f"{result['num_experts']} experts over {result['expert_parallel_size']} ranks, "
                    f"{result['experts_per_gpu']} per GPU",
                )
            )
        per_replica = " per replica" if dp > 1 else ""
        rows += [
            ("parameters", f"{result['parameters'] / 1e9:.2f} B"),
            ("weights", f"{result['weight_bytes'] / 1e9:.1f} GB ({result['dtype']})"),
            ("weights per GPU", f"{result['weight_bytes_per_gpu'] / GIB:.1f} GiB"),
            ("GPU budget", f"{result['gpu_budget_bytes'] / GIB:.1f} GiB"),
            ("KV cache per token", f"{result['kv_bytes_per_token']:,} bytes ({result['kv_cache_dtype']})"),
            ("KV cache tokens", f"{result['kv_cache_tokens']:,}{per_replica}"),
            ("max model length", f"{result['max_model_len']:,}"),
        ]
        if dp > 1:
            rows.append(("KV cache, all replicas", f"{result['kv_cache_tokens_total']:,} tokens"))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        print(f"layout: {result['layout_reason']}")
        print(result["reason"])
        for note in result["notes"]:
            print(f"note: {note}")
    return 0 if result["fits"] else 1
