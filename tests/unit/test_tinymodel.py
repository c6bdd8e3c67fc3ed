"""tinymodel without the node venv: parameters, stamp logic, and failures that leave nothing behind.

Generating the model needs torch + transformers (the node venv): tests/e2e/test_nodeenv.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from multinode_vllm.testbed import tinymodel
from multinode_vllm.testbed.podman import TestbedError


def test_config_is_the_verified_shape() -> None:
    c = tinymodel.CONFIG
    assert c["hidden_size"] == c["num_attention_heads"] * c["head_dim"]
    assert c["head_dim"] >= 32  # 16 crashed vLLM's CPU attention at the first request
    assert c["num_attention_heads"] % c["num_key_value_heads"] == 0
    assert (c["vocab_size"], c["num_hidden_layers"], c["max_position_embeddings"]) == (512, 2, 1024)


def test_stamp_decides_reuse(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    assert not tinymodel.is_current(dest)
    dest.mkdir()
    (dest / tinymodel.STAMP).write_text("0000\n")
    assert not tinymodel.is_current(dest)
    (dest / tinymodel.STAMP).write_text(tinymodel.spec_hash() + "\n")
    assert tinymodel.is_current(dest)
    # A current directory is returned without running any interpreter (this one does not exist).
    assert tinymodel.make_tiny_llama(dest, python="/nonexistent/python") == dest


def test_spec_hash_follows_the_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    before = tinymodel.spec_hash()
    monkeypatch.setitem(tinymodel.CONFIG, "num_hidden_layers", 3)
    assert tinymodel.spec_hash() != before


def test_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match="build the node venv"):
        tinymodel.make_tiny_llama(tmp_path / "m", python=str(tmp_path / "no-python"))
    assert not (tmp_path / "m").exists()


def test_generator_failure_leaves_no_directory(tmp_path: Path) -> None:
    # An interpreter without torch/transformers (the controller's, with python -I: isolated).
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c 'import sys; sys.exit(\"no torch here\")'\n")
    fake.chmod(0o755)
    dest = tmp_path / "m"
    with pytest.raises(TestbedError, match="no torch here"):
        tinymodel.make_tiny_llama(dest, python=str(fake), quiet=True)
    assert not dest.exists()
    assert not dest.with_name("m.tmp").exists()
