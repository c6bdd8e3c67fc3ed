"""Planner: data parallel (replicas) and expert parallel (MoE experts over DP x TP ranks), hand-computed.

Every number below is worked out in the comments from the fixtures' config.json; the planner
computes it from the same file.
"""

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
    plan,
    routed_expert_parameters,
)

from multinode_vllm.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
H100 = 80 * GIB
# int(80 GiB x 0.9): vLLM's budget per GPU
BUDGET = 77_309_411_328
OVERHEAD = 2 * GIB  # 2,147,483,648


def cfg(name: str) -> dict:
    return load_config(str(MODELS / name))


# --- Mixtral 8x7B: hidden 4096, 32 layers, 8 experts (top 2) of intermediate 14336, vocab 32000,
# 32 heads, 8 KV heads, bf16, untied lm_head.
# Per layer: attention q 4096·4096 + k, v 2·4096·1024 + o 4096·4096 = 41,943,040
#            experts 8 · 3·4096·14336 = 8 · 176,160,768 = 1,409,286,144
#            router 4096·8 = 32,768; norms 2·4096 = 8,192           → 1,451,270,144
# 32 layers = 46,440,644,608; embeddings and lm_head 2·32000·4096 = 262,144,000; final norm 4,096
# → 46,702,792,704 parameters. Dense (everything but the routed experts): 1,605,636,096.
MIXTRAL_PARAMS = 46_702_792_704
MIXTRAL_EXPERTS_PER_LAYER = 1_409_286_144


def test_mixtral_routed_experts_are_counted_apart() -> None:
    config = cfg("mixtral-8x7b")
    assert routed_expert_parameters(config, 0) == (MIXTRAL_EXPERTS_PER_LAYER, 0)
    assert routed_expert_parameters(cfg("llama-3.1-8b"), 0) == (0, 0)


def test_mixtral_expert_parallel_over_2x8_gpus() -> None:
    # DP 2 x TP 4 x PP 2 = 16 GPUs: a replica (TP 4 x PP 2 = 8 GPUs) per node, EP = DP x TP = 8 ranks
    # for 8 experts: one expert of each MoE layer per GPU.
    result = plan(
        cfg("mixtral-8x7b"),
        nodes=2,
        gpus_per_node=8,
        gpu_memory_bytes=H100,
        data_parallel_size=2,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        enable_expert_parallel=True,
    )
    assert result["parameters"] == MIXTRAL_PARAMS
    assert (result["expert_parallel_size"], result["num_experts"], result["experts_per_gpu"]) == (8, 8, 1)
    assert (result["gpus_used"], result["gpus_per_replica"]) == (16, 8)
    # Stage 2 (16 layers + lm_head + final norm), per GPU:
    #   dense: 16·(41,943,040 + 32,768 + 8,192) + 131,072,000 + 4,096 = 802,820,096 params / TP 4
    #          = 200,705,024 × 2 bytes = 401,410,048
    #   experts: 16 layers × 1 expert × 176,160,768 = 2,818,572,288 × 2 bytes = 5,637,144,576
    #   → 6,038,554,624 bytes (5.6 GiB); stage 1 has the embeddings instead: 2,048 bytes less.
    assert result["weight_bytes_per_gpu"] == 401_410_048 + 5_637_144_576 == 6_038_554_624
    assert [s["weight_bytes_per_gpu"] for s in result["stages"]] == [6_038_552_576, 6_038_554_624]
    # KV: 2 (K, V) · 32 layers · 8 KV heads · 128 · 2 bytes = 131,072 B/token for the model; a GPU
    # holds 16 layers · 2 KV heads (8 / TP 4) · 2 · 128 · 2 bytes = 16,384 B/token.
    assert result["kv_bytes_per_token"] == 131_072
    assert result["stages"][1]["kv_bytes_per_token_per_gpu"] == 16 * 2 * 2 * 128 * 2 == 16_384
    # free per GPU of stage 2: 77,309,411,328 − 6,038,554,624 − 2,147,483,648 = 69,123,373,056
    # → 69,123,373,056 // 16,384 = 4,218,955 tokens per replica, two replicas
    assert result["kv_cache_tokens"] == (BUDGET - 6_038_554_624 - OVERHEAD) // 16_384 == 4_218_955
    assert result["kv_cache_tokens_total"] == 2 * 4_218_955
    # 32,768-token sequences: 128 per replica, 256 in all
    assert result["max_concurrent_sequences"] == 2 * (4_218_955 // 32_768) == 256
    assert result["fits"] is True
    assert "2 replicas: 8,437,910 tokens in all" in result["reason"]

    # Without EP, TP 4 shards every expert: 23,351,398,400 params / 4 × 2 bytes per GPU, nearly twice.
    no_ep = plan(
        cfg("mixtral-8x7b"),
        nodes=2,
        gpus_per_node=8,
        gpu_memory_bytes=H100,
        data_parallel_size=2,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
    )
    assert no_ep["weight_bytes_per_gpu"] == (16 * 1_451_270_144 + 131_072_000 + 4_096) // 4 * 2 == 11_675_699_200
    assert no_ep["expert_parallel_size"] is None and no_ep["experts_per_gpu"] == 8


def test_mixtral_uneven_experts_the_fullest_rank_counts() -> None:
    # 1 node x 6 GPUs, DP 3 x TP 2: EP 6 ranks for 8 experts, 2 on the first two ranks (ceil(8 / 6)).
    result = plan(
        cfg("mixtral-8x7b"),
        nodes=1,
        gpus_per_node=6,
        gpu_memory_bytes=H100,
        data_parallel_size=3,
        tensor_parallel_size=2,
        enable_expert_parallel=True,
    )
    assert (result["expert_parallel_size"], result["experts_per_gpu"]) == (6, 2)
    # dense 1,605,636,096 params × 2 bytes / TP 2 = 1,605,636,096 bytes
    # experts 32 × 1,409,286,144 = 45,097,156,608 params × 2 bytes × 2/8 = 22,548,578,304 bytes
    assert result["weight_bytes_per_gpu"] == 1_605_636_096 + 22_548_578_304


def test_mixtral_more_ep_ranks_than_experts_is_refused() -> None:
    # DP 2 x TP 8: EP 16 ranks for 8 experts
    with pytest.raises(PlanError) as err:
        plan(
            cfg("mixtral-8x7b"),
            nodes=2,
            gpus_per_node=8,
            gpu_memory_bytes=H100,
            data_parallel_size=2,
            tensor_parallel_size=8,
            enable_expert_parallel=True,
        )
    assert err.value.variable == "enable_expert_parallel"
    for text in ("8 experts", "2 x 8 = 16 ranks", "8 ranks would hold no expert", "at most 8", "=false"):
        assert text in str(err.value), text


# --- Llama 3.1 8B: hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256.
# Per layer 41,943,040 + 3·4096·14336 (176,160,768) + 8,192 = 218,112,000; × 32 = 6,979,584,000;
# + 2·128256·4096 (1,050,673,152) + 4,096 = 8,030,261,248 params → 16,060,522,496 bytes in bf16.


@pytest.mark.parametrize("backend", ["ray", "mp"])
def test_llama_8b_data_parallel_16_over_2x8(backend: str) -> None:
    result = plan(
        cfg("llama-3.1-8b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, data_parallel_size=16, backend=backend
    )
    # DP 16 leaves TP = PP = 1: a whole replica per GPU
    assert (result["data_parallel_size"], result["tensor_parallel_size"], result["pipeline_parallel_size"]) == (
        16,
        1,
        1,
    )
    assert result["parameters"] == 8_030_261_248
    assert result["weight_bytes_per_gpu"] == 16_060_522_496
    # free: 77,309,411,328 − 16,060,522,496 − 2,147,483,648 = 59,101,405,184 bytes;
    # per token on one GPU: 2 · 32 layers · 8 KV heads · 128 · 2 bytes = 131,072
    # → 450,907 tokens per replica (3 sequences of 131,072), × 16 replicas
    assert result["kv_cache_tokens"] == 59_101_405_184 // 131_072 == 450_907
    assert result["kv_cache_tokens_total"] == 16 * 450_907 == 7_214_512
    assert result["max_concurrent_sequences"] == 16 * 3
    assert result["fits"] is True and result["notes"] == []
    assert result["kv_cache_bytes"] == 16 * 59_101_405_184


def test_planner_proposes_data_parallel_when_a_replica_fits_a_node() -> None:
    result = plan(cfg("llama-3.1-8b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100)
    # TP 1 holds the weights and a 131,072-token sequence (above): 16 replicas
    assert (result["data_parallel_size"], result["tensor_parallel_size"], result["pipeline_parallel_size"]) == (
        16,
        1,
        1,
    )
    assert result["layout_reason"].startswith("proposed: one replica fits on 1 GPU of a node")
    assert "16 replicas (data_parallel_size=16)" in result["layout_reason"]


def test_planner_proposes_pipeline_stages_when_no_replica_fits_a_node() -> None:
    result = plan(cfg("llama-3.1-405b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100)
    assert (result["data_parallel_size"], result["tensor_parallel_size"], result["pipeline_parallel_size"]) == (1, 8, 2)
    # 811,706,777,600 bytes / 8 GPUs = 94.5 GiB per GPU, above the 72 GiB budget
    assert "one replica does not fit on a node's 8 GPUs (tensor_parallel_size=8: 94.5 GiB" in result["layout_reason"]
    assert "pipeline_parallel_size=2 stages across them" in result["layout_reason"]
    given = plan(
        cfg("llama-3.1-405b"),
        nodes=2,
        gpus_per_node=8,
        gpu_memory_bytes=H100,
        tensor_parallel_size=8,
        pipeline_parallel_size=2,
    )
    assert given["layout_reason"] == "as given"


def test_replica_that_does_not_fit_says_so_with_numbers_and_the_fix() -> None:
    # 405B, DP 2: one replica per node, TP 8 → 94.5 GiB of weights per GPU, 72.0 GiB budget
    result = plan(cfg("llama-3.1-405b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, data_parallel_size=2)
    assert (result["tensor_parallel_size"], result["pipeline_parallel_size"]) == (8, 1)
    assert result["fits"] is False
    for text in ("94.5 GiB of weights", "72.0 GiB", "data_parallel_size=1 with pipeline_parallel_size stages"):
        assert text in result["reason"], text


@pytest.mark.parametrize(
    ("kwargs", "variable", "fragments"),
    [
        pytest.param(
            # 3 replicas of TP 8 on 16 GPUs
            {"data_parallel_size": 3, "tensor_parallel_size": 8},
            "data_parallel_size",
            ["3 replicas of 8 GPUs need 24", "set data_parallel_size to at most 2"],
            id="more-replicas-than-gpus",
        ),
        pytest.param(
            # mp: every node runs the same number of engines; 3 x 4 = 12 of 16 GPUs
            {"data_parallel_size": 3, "tensor_parallel_size": 4, "backend": "mp"},
            "data_parallel_size",
            ["must use every GPU", "set data_parallel_size=4 (2 replicas per node)", "backend=ray"],
            id="mp-gpus-left-over",
        ),
        pytest.param(
            # TP 16 would cross the nodes: a DP replica runs on one node
            {"data_parallel_size": 2, "tensor_parallel_size": 16, "pipeline_parallel_size": 1},
            "tensor_parallel_size",
            ["wider than a node (8 GPUs)", "one of 1, 2, 4, 8", "data_parallel_size=1"],
            id="tp-crosses-nodes",
        ),
        pytest.param(
            # TP 2 x PP 3 = 6 GPUs: a node of 8 holds one and a third
            {"data_parallel_size": 2, "tensor_parallel_size": 2, "pipeline_parallel_size": 3},
            "tensor_parallel_size",
            ["do not hold whole replicas of TP x PP = 6 GPUs", "one of 1, 2, 4, 8"],
            id="replicas-not-whole",
        ),
        pytest.param(
            {"enable_expert_parallel": True},
            "enable_expert_parallel",
            ["the model is dense", "Fix: set enable_expert_parallel=false"],
            id="ep-on-dense",
        ),
        pytest.param({"data_parallel_size": 0}, "data_parallel_size", ["positive integer"], id="dp-zero"),
        pytest.param(
            {"enable_expert_parallel": "yes"}, "enable_expert_parallel", ["true or false"], id="ep-not-a-bool"
        ),
    ],
)
def test_refusals_name_the_variable_and_the_fix(kwargs: dict, variable: str, fragments: list[str]) -> None:
    with pytest.raises(PlanError) as err:
        plan(cfg("llama-3.1-8b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, **kwargs)
    assert err.value.variable == variable
    for text in fragments:
        assert text in str(err.value), text


def test_spare_gpus_with_data_parallel_follow_the_backend_rule() -> None:
    # ray: 3 replicas of TP 4 use 12 of 16 GPUs, the 4 left over stay idle (noted)
    assert default_parallel(2, 8, dp=3) == (4, 1)
    assert check_parallel(4, 1, 2, 8, "ray", dp=3) is None
    note = idle_gpus(4, 1, 2, 8, "ray", dp=3)
    assert note is not None and "uses 12 of the 16 GPUs" in note and "4 GPUs stay idle" in note
    result = plan(cfg("llama-3.1-8b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, data_parallel_size=3)
    assert result["gpus_used"] == 12 and any("4 GPUs stay idle" in n for n in result["notes"])
    # mp: refused (the message names the inventory variables by default)
    problem = check_parallel(4, 1, 2, 8, "mp", dp=3)
    assert problem is not None and "vllm_serve_data_parallel_size=4" in problem
    # DP 1 keeps the old rule: one replica may span the nodes
    assert check_parallel(8, 2, 2, 8, "mp", dp=1) is None


def test_cli_data_and_expert_parallel(capsys: pytest.CaptureFixture[str]) -> None:
    mixtral = str(MODELS / "mixtral-8x7b")
    common = ["--nodes", "2", "--gpus-per-node", "8", "--gpu-memory-gib", "80"]
    layout = ["--data-parallel-size", "2", "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"]
    rc = main(["plan", mixtral, *common, *layout, "--enable-expert-parallel"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 × 4 × 2 = 16 of 16 GPUs" in out
    assert "8 experts over 8 ranks, 1 per GPU" in out
    assert "4,218,955 per replica" in out and "8,437,910 tokens" in out
    assert "layout: as given" in out

    rc = main(["plan", str(MODELS / "llama-3.1-8b"), *common, "--json"])
    proposed = json.loads(capsys.readouterr().out)
    assert rc == 0 and proposed["data_parallel_size"] == 16
    assert proposed["layout_reason"].startswith("proposed:")

    rc = main(["plan", str(MODELS / "llama-3.1-8b"), *common, "--enable-expert-parallel", "--json"])
    captured = capsys.readouterr()
    assert rc == 2
    assert json.loads(captured.out)["variable"] == "enable_expert_parallel"
    assert "the model is dense" in captured.err


def test_filters_take_data_parallel_through_ansible() -> None:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    bin_dir = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    expr = (
        "{{ [(4 | multinode.vllm.parallel_check(1, nodes=2, gpus_per_node=8, backend='mp',"
        " data_parallel_size=3)).problem,"
        " (model | multinode.vllm.vllm_plan(nodes=2, gpus_per_node=8, gpu_memory_bytes=85899345920,"
        " data_parallel_size=2, tensor_parallel_size=4, pipeline_parallel_size=2,"
        " enable_expert_parallel=true)).weight_bytes_per_gpu] }}"
    )
    proc = subprocess.run(
        [
            *(str(bin_dir / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", "debug"),
            *("-a", f"msg={expr}", "-e", f"model={MODELS / 'mixtral-8x7b'}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "vllm_serve_data_parallel_size=4" in flat
    assert "6038554624" in flat


def test_mixtral_proposals_with_and_without_expert_parallel() -> None:
    # No EP: TP 1 cannot hold 93.4 GB of weights in a 72 GiB budget; TP 2 holds 43.5 GiB per GPU and
    # leaves room for 32,768-token sequences → 8 replicas of TP 2.
    plain = plan(cfg("mixtral-8x7b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100)
    assert (plain["data_parallel_size"], plain["tensor_parallel_size"], plain["pipeline_parallel_size"]) == (8, 2, 1)
    assert plain["weight_bytes_per_gpu"] == MIXTRAL_PARAMS * 2 // 2  # 2 bytes each, halved by TP 2
    # EP: whole replicas on all 16 GPUs always make DP x TP = 16 ranks for 8 experts, so the planner
    # falls back to one replica over the nodes, TP 8 x PP 2 (EP 8, one expert per GPU), and says why.
    ep = plan(cfg("mixtral-8x7b"), nodes=2, gpus_per_node=8, gpu_memory_bytes=H100, enable_expert_parallel=True)
    assert (ep["data_parallel_size"], ep["tensor_parallel_size"], ep["pipeline_parallel_size"]) == (1, 8, 2)
    assert (ep["expert_parallel_size"], ep["experts_per_gpu"]) == (8, 1)
    assert "16 expert-parallel ranks (DP x TP) for the model's 8 experts" in ep["layout_reason"]
