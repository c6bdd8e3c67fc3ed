"""`multinode-vllm plan` on numbers that are not finite and dtypes outside vLLM's vocabulary: exit 2
with a message naming the option, never a traceback; the same dtype vocabulary as validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from multinode_vllm.module_utils._planner import VLLM_DTYPES

from multinode_vllm import PROJECT_DIR

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gpu-memory-gib", "nan"], "--gpu-memory-gib"),
        (["--gpu-memory-gib", "inf"], "--gpu-memory-gib"),
        (["--gpu-memory-gib", "-80"], "--gpu-memory-gib"),
        (["--gpu-memory-gib", "80", "--gpu-memory-utilization", "nan"], "--gpu-memory-utilization"),
        (["--gpu-memory-gib", "80", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["--gpu-memory-gib", "80", "--dtype", "fp16"], "--dtype"),
        (["--gpu-memory-gib", "80", "--nodes", "0"], "--nodes"),
    ],
)
def test_bad_numbers_and_dtypes_exit_2_naming_the_option(tmp_path: Path, args: list[str], says: str) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    base = ["--nodes", "2", "--gpus-per-node", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "multinode_vllm", "plan", str(tmp_path), *base, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_one_dtype_vocabulary_in_validate_and_the_cli() -> None:
    rules = yaml.safe_load((Path(PROJECT_DIR) / "roles" / "validate" / "vars" / "main.yml").read_text())
    assert tuple(rules["_validate_rules"]["vllm_serve_dtype"]["choices"]) == VLLM_DTYPES
