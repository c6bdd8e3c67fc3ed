"""The node venv and the tiny model, built (or reused) for real, checked from the venv itself.

No containers: these run the node venv's own interpreter on the host. The first build takes about
80 s and 3.8 GB (PyPI); later runs reuse the venv through its stamp (under a second).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from multinode_vllm.testbed import nodeenv, tinymodel

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def venv() -> Path:
    return nodeenv.build_node_venv()


def vrun(venv: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """A program of the venv, with this environment less what would steer vLLM's platform or its
    process start, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("VLLM_TARGET_DEVICE", "VLLM_WORKER_MULTIPROC_METHOD")}
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **env},
        check=False,
    )


def test_venv_is_stamped_and_reused(venv: Path) -> None:
    assert (venv / nodeenv.STAMP).read_text().strip() == nodeenv.spec_hash()
    t0 = time.monotonic()
    assert nodeenv.build_node_venv(venv, quiet=True) == venv
    assert time.monotonic() - t0 < 5, "a current venv must be reused, not rebuilt"
    # Debian's interpreter: the same path exists in every node container.
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg
    assert "version = 3.11" in cfg


def test_vllm_cli_reports_version(venv: Path) -> None:
    proc = vrun(venv, "vllm", "--version")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == nodeenv.VLLM_VERSION


def test_platform_plugin_is_discovered(venv: Path) -> None:
    code = (
        "from vllm.platforms import current_platform as p; "
        "print(type(p).__name__, p.ray_device_key, p.device_type, p.get_device_communicator_cls())"
    )
    proc = vrun(venv, "python", "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        "CpuRayPlatform GPU cpu vllm_cpu_ray.communicator.CpuRayCommunicator"
    )


def test_shm_identity_separates_hosts_only(venv: Path) -> None:
    # Same /dev/shm -> same identity (SHM fast path); VLLM_CPU_RAY_NO_SHM=1 -> unique per process.
    code = "from vllm_cpu_ray.communicator import shm_identity as s; print(s() == s(), s())"
    same = vrun(venv, "python", "-c", code)
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stdout.split()[0] == "True"
    again = vrun(venv, "python", "-c", code)
    assert again.stdout.split()[1] == same.stdout.split()[1]
    env_code = "import os; os.environ['VLLM_CPU_RAY_NO_SHM'] = '1'; " + code
    forced = vrun(venv, "python", "-c", env_code)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert forced.stdout.split()[1].startswith("no-shm-")


def test_pinned_versions_and_removed_packages(venv: Path) -> None:
    code = (
        "import importlib.metadata as m, json\n"
        "def v(n):\n"
        "    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return None\n"
        "print(json.dumps({n: v(n) for n in ['vllm', 'vllm-cpu', 'ray', 'torch', 'nvidia-ml-py', "
        "'vllm-cpu-ray', 'torchvision', 'torchaudio', 'torchcodec']}))"
    )
    proc = vrun(venv, "python", "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["vllm"] == got["vllm-cpu"] == nodeenv.VLLM_VERSION
    assert got["ray"] == nodeenv.RAY_VERSION
    assert got["torch"] and got["torch"].endswith("+cpu")
    assert got["nvidia-ml-py"] and got["vllm-cpu-ray"]
    assert got["torchvision"] is None and got["torchaudio"] is None and got["torchcodec"] is None


def test_tiny_llama_is_made_and_loads(venv: Path, tmp_path: Path) -> None:
    dest = tmp_path / "tiny"
    python = str(venv / "bin" / "python")
    assert tinymodel.make_tiny_llama(dest, python=python, quiet=True) == dest
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["vocab_size"], cfg["head_dim"], cfg["num_hidden_layers"]) == (512, 32, 2)
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert "chat_template" in json.loads((dest / "tokenizer_config.json").read_text())
    assert (dest / "generation_config.json").exists()
    size = (dest / "model.safetensors").stat().st_size
    assert 500_000 < size < 2_000_000, size
    # Reused (stamp) without running the generator again.
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert tinymodel.make_tiny_llama(dest, python=python, quiet=True) == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime
    # Loads with transformers and renders the chat template; deterministic weights (seeded).
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoTokenizer, AutoModelForCausalLM\n"
        "d = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(d)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Hello'}], add_generation_prompt=True)\n"
        "ids = ids['input_ids'] if hasattr(ids, 'keys') else ids\n"
        "m = AutoModelForCausalLM.from_pretrained(d)\n"
        "out = m(torch.tensor([ids])).logits\n"
        "print(json.dumps({'n': len(ids), 'shape': list(out.shape), 'sum': float(out.float().sum())}))\n"
    )
    a = vrun(venv, "python", "-c", code, str(dest))
    assert a.returncode == 0, a.stderr[-2000:]
    got = json.loads(a.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, got["n"], 512]
    other = tmp_path / "tiny2"
    tinymodel.make_tiny_llama(other, python=python, quiet=True)
    b = vrun(venv, "python", "-c", code, str(other))
    assert b.returncode == 0, b.stderr[-2000:]
    assert json.loads(b.stdout.strip().splitlines()[-1]) == got


def test_vllm_cache_seed_is_taken_by_vllm_itself(venv: Path, tmp_path: Path) -> None:
    """The seed copied into every new node's ~/.cache/vllm answers vLLM's model inspection: with a
    copy as VLLM_CACHE_ROOT, vLLM finds the answer for its own llama.py hash and never starts the
    subprocess that imports vLLM again (the inspection subprocess is made to fail here)."""
    seed = nodeenv.seed_cache_dir(venv)
    assert sorted(p.name for p in (seed / "modelinfos").iterdir()) == [
        "vllm-model_executor-models-llama-LlamaForCausalLM.json"
    ]
    root = tmp_path / "vllm-cache"
    subprocess.run(["cp", "-R", str(seed), str(root)], check=True)
    code = (
        "import vllm.model_executor.models.registry as r\n"
        "def no_subprocess(fn): raise SystemExit('inspection subprocess started: the seed was not taken')\n"
        "r._run_in_subprocess = no_subprocess\n"
        "print(r.ModelRegistry.models['LlamaForCausalLM'].inspect_model_cls().supports_pp)"
    )
    proc = vrun(venv, "python", "-c", code, VLLM_CACHE_ROOT=str(root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(("spawn", "method"), [("", "fork"), ("1", "spawn")])
def test_platform_plugin_forks_unless_told_to_spawn(venv: Path, spawn: str, method: str) -> None:
    """vLLM's CPU platform sets `spawn` in its config check; the test bed's platform forks (as vLLM
    does on CUDA), unless VLLM_CPU_RAY_SPAWN=1. The CPU platform's own check is replaced by one that
    only sets `spawn`: what is tested is the plugin's step after it."""
    code = (
        "import os\n"
        "import vllm.platforms.cpu as cpu\n"
        "from vllm_cpu_ray.platform import CpuRayPlatform\n"
        "cpu.CpuPlatform.check_and_update_config = classmethod("
        "lambda cls, cfg: os.environ.__setitem__('VLLM_WORKER_MULTIPROC_METHOD', 'spawn'))\n"
        "CpuRayPlatform.check_and_update_config(None)\n"
        "print(os.environ['VLLM_WORKER_MULTIPROC_METHOD'])"
    )
    proc = vrun(venv, "python", "-c", code, VLLM_CPU_RAY_SPAWN=spawn)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == method
