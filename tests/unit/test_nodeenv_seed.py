"""The seed of vLLM's cache: made once per node venv, copied into every new test bed node.

The node venv's interpreter is faked (a shell script that writes what vLLM writes); that vLLM itself
takes the seed is tests/e2e/test_nodeenv.py's.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from multinode_vllm.testbed import nodeenv, nodes
from multinode_vllm.testbed.podman import TestbedError

INFO = "vllm-model_executor-models-llama-LlamaForCausalLM.json"


def fake_venv(tmp_path: Path, script: str) -> Path:
    venv = tmp_path / "node"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text("#!/bin/sh\n" + script)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    return venv


def writes(calls: Path) -> str:
    """A fake interpreter that logs its class argument and writes what vLLM's inspection writes."""
    return (
        f'echo "call: $3" >> "{calls}"; '
        f'mkdir -p "$VLLM_CACHE_ROOT/modelinfos" && echo {{}} > "$VLLM_CACHE_ROOT/modelinfos/{INFO}"\n'
    )


def test_the_seed_is_made_once(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    venv = fake_venv(tmp_path, writes(calls))
    progress = nodeenv._Progress(quiet=True)
    nodeenv._seed_vllm_cache(venv, progress)
    seed = nodeenv.seed_cache_dir(venv)
    assert (seed / "modelinfos" / INFO).read_text().strip() == "{}"
    assert calls.read_text() == "call: LlamaForCausalLM\n"  # the classes to inspect are passed to vLLM
    nodeenv._seed_vllm_cache(venv, progress)  # present: vLLM is not started again
    assert calls.read_text() == "call: LlamaForCausalLM\n"
    # nothing left behind but the seed (the work dir is renamed into place)
    assert [p.name for p in venv.iterdir() if p.name.startswith(".vllm-cache")] == []


def test_a_seed_that_writes_nothing_is_an_error_and_leaves_no_seed(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "exit 0\n")
    with pytest.raises(TestbedError, match="wrote nothing"):
        nodeenv._seed_vllm_cache(venv, nodeenv._Progress(quiet=True))
    assert not nodeenv.seed_cache_dir(venv).exists()
    assert [p.name for p in venv.iterdir() if p.name.startswith(".vllm-cache")] == []


def test_a_failing_inspection_names_the_step(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, "echo 'no vllm here' >&2; exit 3\n")
    with pytest.raises(TestbedError, match=r"(?s)seed vLLM's cache failed \(rc 3\).*no vllm here"):
        nodeenv._seed_vllm_cache(venv, nodeenv._Progress(quiet=True))


def test_new_nodes_get_the_seed_with_their_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    monkeypatch.setattr(nodes, "podman", lambda *a, **kw: seen.append((a, kw)))
    seed = tmp_path / "a dir" / "vllm-cache"
    monkeypatch.setattr(nodes, "seed_cache_dir", lambda: seed)
    nodes._install_key("mnv-node1", "ssh-ed25519 AAAA test")
    ((args, kw),) = seen
    assert args[:4] == ("exec", "-i", "mnv-node1", "sh")
    script = args[-1]
    assert "cat > /root/.ssh/authorized_keys" in script
    assert kw["input"] == "ssh-ed25519 AAAA test"
    # copied only where the seed exists, path quoted
    assert f"if [ -d '{seed}' ]; then mkdir -p /root/.cache/vllm && cp -R '{seed}'/. /root/.cache/vllm/; fi" in script
