"""The model phase: model_files / model_copy (module_utils and main()), and the model_cache role.

The checkpoints are real safetensors files written here (an 8-byte header length, the JSON
header, the data buffer), so the header and size checks read what vLLM would read. The role runs
through the real ansible-playbook (playbooks/model.yml, with the validate role's plan) on one
local host; only the preflight facts and the Hugging Face CLI (tests/fixtures/fake_hf/hf: there is
no hub here) are stand-ins. Two-node behaviour (shared storage seen by a worker, copies on every
node) is the e2e test's (tests/e2e/test_model_testbed.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.multinode.vllm.plugins.module_utils import _model
from ansible_collections.multinode.vllm.plugins.module_utils._planner import load_config, plan
from ansible_collections.multinode.vllm.plugins.modules import model_copy, model_files
from ansible_run import FAKE_FACTS_MODULE, ansible_playbook

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
FAKE_HF = ROOT / "tests" / "fixtures" / "fake_hf" / "hf"
TINY_CONFIG = ROOT / "tests" / "fixtures" / "models" / "tiny-llama" / "config.json"
TOKEN = "hf_unitTEST0secret0token0value42"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_safetensors(path: Path, tensors: dict[str, int]) -> int:
    """A safetensors file with BF16 tensors of the given byte sizes; returns its size."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, nbytes in tensors.items():
        header[name] = {"dtype": "BF16", "shape": [nbytes // 2], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path.stat().st_size


def tiny_weight_bytes(config: Path = TINY_CONFIG) -> int:
    return int(plan(load_config(str(config)), nodes=1, gpus_per_node=1, gpu_memory_bytes=8 * 2**30)["weight_bytes"])


def make_model(dest: Path, shards: int = 1, weight_bytes: int | None = None) -> Path:
    """The tiny Llama's config and weights of the planned size, in 1 file or N shards + an index."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_CONFIG, dest / "config.json")
    (dest / "tokenizer_config.json").write_text("{}\n")
    total = weight_bytes if weight_bytes is not None else tiny_weight_bytes()
    if shards == 1:
        write_safetensors(dest / "model.safetensors", {"model.embed_tokens.weight": total})
        return dest
    per = total // shards // 2 * 2
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"model.layers.{i}.a.weight": per // 2, f"model.layers.{i}.b.weight": per - per // 2}
        write_safetensors(dest / name, tensors)
        weight_map.update(dict.fromkeys(tensors, name))
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def truncate(path: Path, by: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - by)


# --- module_utils ------------------------------------------------------------------------------


def test_a_complete_model_passes_and_its_size_matches_the_plan(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    r = _model.inspect_model(str(model), expected_weight_bytes=tiny_weight_bytes())
    assert r["complete"], r["problems"]
    assert r["weight_files"] == ["model.safetensors"]
    assert r["tensor_count"] == 1
    assert r["size_check"]["checked"] and r["size_check"]["ok"]
    assert 0 < r["size_check"]["deviation"] < 0.01  # the header's few hundred bytes


def test_sharded_model_with_index_is_complete(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=3)
    r = _model.inspect_model(str(model))
    assert r["complete"], r["problems"]
    assert len(r["weight_files"]) == 3 and r["tensor_count"] == 6
    assert r["size_check"]["checked"] is False


def test_truncated_shard_is_named_with_both_sizes(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=2)
    shard = model / "model-00002-of-00002.safetensors"
    full = shard.stat().st_size
    truncate(shard, 100)
    r = _model.inspect_model(str(model))
    assert not r["complete"]
    assert r["problems"] == [
        f"model-00002-of-00002.safetensors is truncated: {full - 100} bytes, its header says {full} "
        "(an interrupted download or copy)"
    ]


def test_missing_shard_named_by_the_index(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=2)
    (model / "model-00001-of-00002.safetensors").unlink()
    r = _model.inspect_model(str(model))
    assert r["problems"] == [
        "model-00001-of-00002.safetensors is missing (model.safetensors.index.json assigns 2 tensors to it)"
    ]


def test_shard_lacking_the_tensors_the_index_assigns(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=2)
    write_safetensors(model / "model-00002-of-00002.safetensors", {"other.weight": 64})
    r = _model.inspect_model(str(model))
    assert len(r["problems"]) == 1
    assert r["problems"][0].startswith("model-00002-of-00002.safetensors lacks 2 of the 2 tensors")


def test_missing_config_no_weights_bad_header_and_longer_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _model.inspect_model(str(empty))
    assert r["problems"] == ["config.json is missing", "no *.safetensors weights (vLLM's default loader needs them)"]
    model = make_model(tmp_path / "m")
    (model / "model.safetensors").write_bytes(b"\xff" * 16)
    assert "not plausible" in _model.inspect_model(str(model))["problems"][0]
    make_model(model)
    with open(model / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 8)
    assert "its header says" in _model.inspect_model(str(model))["problems"][0]
    (model / "config.json").write_text("[1]")
    assert "config.json does not hold a JSON object" in _model.inspect_model(str(model))["problems"]
    assert _model.inspect_model(str(tmp_path / "nope"))["problems"] == [
        f"{tmp_path / 'nope'} does not exist or is not a directory"
    ]


def test_size_check_against_the_plan() -> None:
    assert _model.size_check(110, 100, 0.1)["ok"]
    low = _model.size_check(80, 100, 0.1)
    assert not low["ok"] and low["deviation"] == -0.2
    assert _model.size_check(80, 0, 0.1) == {
        "checked": False,
        "ok": True,
        "expected_bytes": 0,
        "actual_bytes": 80,
        "deviation": None,
    }


def hub_cache(home: Path, repo: str, model: Path, commit: str = COMMIT, ref: str | None = "main") -> Path:
    base = home / "hub" / _model.repo_folder(repo)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir()
    for f in model.iterdir():
        blob = base / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    if ref:
        (base / "refs").mkdir()
        (base / "refs" / ref).write_text(commit)
    return snap


def test_hub_snapshot_by_branch_and_by_commit_and_a_dangling_blob(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=2)
    snap = hub_cache(tmp_path / "hf", "org/tiny", model)
    assert _model.hub_snapshot(str(tmp_path / "hf"), "org/tiny", "main") == (str(snap), COMMIT, None)
    assert _model.hub_snapshot(str(tmp_path / "hf"), "org/tiny", COMMIT)[0] == str(snap)
    path, commit, problem = _model.hub_snapshot(str(tmp_path / "hf"), "org/tiny", "v2")
    assert (path, commit) == ("", "") and problem and "org/tiny@v2 is not in the Hugging Face cache" in problem
    assert _model.inspect_model(str(snap))["complete"]
    (tmp_path / "hf" / "hub" / "models--org--tiny" / "blobs" / "blob-model-00002-of-00002.safetensors").unlink()
    r = _model.inspect_model(str(snap))
    assert r["problems"] == [
        "model-00002-of-00002.safetensors is missing (a dangling link: its blob was never downloaded or was removed)"
    ]
    with pytest.raises(_model.ModelFileError, match="repo id"):
        _model.hub_snapshot(str(tmp_path / "hf"), "/models/x", "main")


def test_copy_is_a_quick_check_mirror_that_keeps_inner_links(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=2)
    src = tmp_path / "hf"
    hub_cache(src, "org/tiny", model)
    tree = src / "hub" / "models--org--tiny"
    dest = tmp_path / "local" / "models--org--tiny"
    actions = _model.plan_copy(str(tree), str(dest))
    kinds = {a["path"]: a["kind"] for a in actions}
    assert kinds["refs/main"] == "file" and kinds[f"snapshots/{COMMIT}/config.json"] == "link"
    assert _model.apply_copy(str(tree), str(dest), actions) > 0
    assert os.readlink(dest / "snapshots" / COMMIT / "config.json") == "../../blobs/blob-config.json"
    assert _model.inspect_model(str(dest / "snapshots" / COMMIT))["complete"]
    assert _model.plan_copy(str(tree), str(dest)) == []  # second run: nothing
    truncate(dest / "blobs" / "blob-model-00001-of-00002.safetensors", 10)  # a damaged copy is replaced
    again = _model.plan_copy(str(tree), str(dest))
    assert [a["path"] for a in again] == ["blobs/blob-model-00001-of-00002.safetensors"]
    assert again[0]["why"].startswith("size ")
    _model.apply_copy(str(tree), str(dest), again)
    assert _model.inspect_model(str(dest / "snapshots" / COMMIT))["complete"]
    assert not list(dest.rglob("*" + _model.PARTIAL_SUFFIX))


def test_copy_follows_links_leaving_the_tree_and_refuses_overlaps(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    snap = hub_cache(tmp_path / "hf", "org/tiny", model)  # a snapshot dir: links to ../../blobs
    dest = tmp_path / "local"
    _model.apply_copy(str(snap), str(dest), _model.plan_copy(str(snap), str(dest)))
    assert not (dest / "model.safetensors").is_symlink()
    assert _model.inspect_model(str(dest))["complete"]
    with pytest.raises(_model.ModelFileError, match="overlap"):
        _model.plan_copy(str(model), str(model / "sub"))
    with pytest.raises(_model.ModelFileError, match="does not exist"):
        _model.plan_copy(str(tmp_path / "nope"), str(dest))
    with pytest.raises(_model.ModelFileError, match="absolute"):
        _model.plan_copy("relative", str(dest))


# --- the modules' main() -------------------------------------------------------------------------


def run_module(module: Any, args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_model_files_main_path_and_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path / "m")
    out = run_module(model_files, {"path": str(model), "expected_weight_bytes": tiny_weight_bytes() * 2}, capsys)
    assert out["changed"] is False and out["complete"] is True
    assert out["size_check"]["ok"] is False and out["size_check"]["deviation"] < -0.49
    hub_cache(tmp_path / "hf", "org/tiny", model)
    out = run_module(model_files, {"hf_home": str(tmp_path / "hf"), "repo": "org/tiny"}, capsys)
    assert out["complete"] and out["commit"] == COMMIT and out["path"].endswith(f"snapshots/{COMMIT}")
    out = run_module(model_files, {"hf_home": str(tmp_path / "hf"), "repo": "org/other"}, capsys)
    assert out["complete"] is False and out["path"] == "" and "org/other@main" in out["problems"][0]
    out = run_module(model_files, {"path": str(model), "repo": "org/tiny", "hf_home": "/x"}, capsys)
    assert out["failed"] and "mutually exclusive" in out["msg"]


def test_model_copy_main_check_mode_then_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model(tmp_path / "m")
    dest = tmp_path / "dest"
    out = run_module(model_copy, {"src": str(model), "dest": str(dest), "_ansible_check_mode": True}, capsys)
    assert out["changed"] and out["copied_count"] == 3 and out["copied_bytes"] == 0
    assert not dest.exists()
    out = run_module(model_copy, {"src": str(model), "dest": str(dest)}, capsys)
    assert out["changed"] and out["copied_bytes"] == sum(f.stat().st_size for f in model.iterdir())
    out = run_module(model_copy, {"src": str(model), "dest": str(dest)}, capsys)
    assert out["changed"] is False and out["copied"] == []
    out = run_module(model_copy, {"src": str(tmp_path / "none"), "dest": str(dest)}, capsys)
    assert out["failed"] and "does not exist" in out["msg"]


# --- the role, through ansible-playbook on one local host ----------------------------------------

PLAYBOOK = """\
- name: Preflight facts (stand-in)
  hosts: vllm_cluster
  gather_facts: false
  tasks:
    - name: Set the facts preflight would gather
      fake_facts:
        facts:
          multinode_fabric: {{control_ip: 192.0.2.11, nccl_socket_ifname: lo, gloo_socket_ifname: lo}}
          multinode_gpu: {{count: 1}}
          multinode_ib: {{present: false}}
- name: Model phase
  ansible.builtin.import_playbook: {root}/playbooks/model.yml
"""
RECAP = re.compile(r"^node1\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.raw = proc.stdout + proc.stderr
        self.out = " ".join(self.raw.split())  # the yaml callback folds long messages
        m = RECAP.search(proc.stdout)
        self.changed = int(m.group(2)) if m else -1


@pytest.fixture
def role_env(tmp_path: Path) -> dict[str, Any]:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    (tmp_path / "pb.yml").write_text(PLAYBOOK.format(root=ROOT))
    return {"tmp": tmp_path, "lib": lib}


def play(env: dict[str, Any], *args: str, **vars_: Any) -> Run:
    tmp: Path = env["tmp"]
    base = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "multinode_runtime": "docker",
        "multinode_config_dir": str(tmp / "etc"),
        "validate_gpus_per_node": 1,
        "validate_gpu_memory_gib": 8,
        "validate_model_config_path": str(TINY_CONFIG),
        "vllm_serve_tensor_parallel_size": 1,
        "vllm_serve_pipeline_parallel_size": 1,
    }
    inv = {
        "all": {
            "children": {
                "vllm_cluster": {
                    "children": {"ray_head": {"hosts": {"node1": {"ansible_host": "127.0.0.1"}}}, "ray_workers": {}},
                    "vars": {**base, **vars_},
                }
            }
        }
    }
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inv))
    proc = ansible_playbook(
        *("-i", str(tmp / "hosts.yml"), str(tmp / "pb.yml"), *args),
        timeout=180,
        ANSIBLE_LIBRARY=str(env["lib"]),
        ANSIBLE_NOCOLOR="1",
    )
    return Run(proc)


def test_role_path_local_copy_check_mode_first_and_second_run(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    src = make_model(tmp / "shared" / "tiny", shards=2)
    dest = tmp / "local" / "tiny"
    v = {
        "model_cache_source": "path",
        "model_cache_storage": "local",
        "model_cache_source_path": str(src),
        "multinode_model": str(dest),
    }
    check = play(role_env, "--check", **v)
    assert check.rc == 0, check.out[-3000:]
    assert "check mode: the model would be downloaded or copied first" in check.out
    assert not dest.exists()
    first = play(role_env, **v)
    assert first.rc == 0, first.out[-3000:]
    assert first.changed == 1 and "model complete" in first.out and "2 safetensors files" in first.out
    assert _model.inspect_model(str(dest))["complete"]
    second = play(role_env, **v)
    assert second.rc == 0 and second.changed == 0, second.out[-3000:]


def test_role_stops_on_a_truncated_source_before_copying(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    src = make_model(tmp / "shared" / "tiny")
    truncate(src / "model.safetensors", 100)
    dest = tmp / "local" / "tiny"
    r = play(
        role_env,
        model_cache_source="path",
        model_cache_storage="local",
        model_cache_source_path=str(src),
        multinode_model=str(dest),
    )
    assert r.rc == 2, r.out[-3000:]
    assert f"The model to copy, model_cache_source_path={src}, is incomplete on node1" in r.out
    assert re.search(r"model\.safetensors is truncated: \d+ bytes, its header says \d+", r.out), r.out[-3000:]
    assert not dest.exists()


def test_role_stops_on_a_missing_shard_in_place(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    model = make_model(tmp / "shared" / "tiny", shards=2)
    (model / "model-00002-of-00002.safetensors").unlink()
    r = play(role_env, model_cache_source="path", model_cache_storage="shared", multinode_model=str(model))
    assert r.rc == 2, r.out[-3000:]
    assert f"The model on node1 at {model} is incomplete" in r.out
    assert "model-00002-of-00002.safetensors is missing (model.safetensors.index.json assigns 2 tensors to it)" in r.out
    assert "put a complete copy of the model at multinode_model=" in r.out


def test_role_stops_when_the_files_are_not_the_size_of_the_plan(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    model = make_model(tmp / "shared" / "tiny", weight_bytes=tiny_weight_bytes() // 2)
    r = play(role_env, model_cache_source="path", model_cache_storage="shared", multinode_model=str(model))
    assert r.rc == 2, r.out[-3000:]
    assert "but the plan of the validate phase expects 853248 bytes (0.001 GiB)" in r.out
    assert "-50.0 % off, more than model_cache_size_tolerance=0.1" in r.out
    ok = play(
        role_env,
        model_cache_source="path",
        model_cache_storage="shared",
        multinode_model=str(model),
        model_cache_check_size=False,
    )
    assert ok.rc == 0 and "size not compared" in ok.out, ok.out[-3000:]


def fake_hf(env: dict[str, Any], source: Path, **conf: Any) -> tuple[Path, Path]:
    bindir: Path = env["tmp"] / "bin"
    bindir.mkdir(exist_ok=True)
    shutil.copy(FAKE_HF, bindir / "hf")
    log = env["tmp"] / "hf-calls.jsonl"
    (bindir / "fake-hf.json").write_text(json.dumps({"source": str(source), "log": str(log), **conf}))
    return bindir / "hf", log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_role_hub_download_token_in_env_only_then_cached(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    cli, log = fake_hf(role_env, make_model(tmp / "origin", shards=2))
    home = tmp / "shared" / "hf"
    v = {
        "model_cache_source": "hub",
        "model_cache_storage": "shared",
        "model_cache_hub_cli": str(cli),
        "multinode_model": "org/tiny-llama",
        "multinode_model_revision": COMMIT,
        "multinode_hf_home": str(home),
        "multinode_hf_token": TOKEN,
    }
    check = play(role_env, "--check", **v)
    assert check.rc == 0, check.out[-3000:]
    assert "check mode: the model would be downloaded or copied first" in check.out
    assert calls(log) == [] and not home.exists()
    first = play(role_env, "-vvv", **v)
    assert first.rc == 0, first.out[-3000:]
    assert first.changed == 1
    (call,) = calls(log)
    assert call["env"]["HF_TOKEN"] == TOKEN and call["env"]["HF_HOME"] == str(home)
    assert TOKEN not in " ".join(call["argv"])
    assert call["argv"][1:] == ["download", "org/tiny-llama", "--revision", COMMIT, "--exclude", "original/*"]
    assert TOKEN not in first.raw
    assert _model.inspect_model(str(home / "hub" / "models--org--tiny-llama" / "snapshots" / COMMIT))["complete"]
    second = play(role_env, "-v", **v)
    assert second.rc == 0 and second.changed == 0, second.out[-3000:]
    assert len(calls(log)) == 1  # complete in the cache: no download, no hub contacted
    assert TOKEN not in second.raw


def test_role_hub_failure_is_reported_with_the_token_masked(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    cli, log = fake_hf(role_env, make_model(tmp / "origin"), fail="401 Client Error: gated repo", echo_token=True)
    r = play(
        role_env,
        model_cache_source="hub",
        model_cache_hub_cli=str(cli),
        multinode_model="org/tiny-llama",
        multinode_hf_home=str(tmp / "hf"),
        multinode_hf_token=TOKEN,
    )
    assert r.rc == 2, r.out[-3000:]
    assert "401 Client Error: gated repo token=***" in r.out
    assert "needs multinode_hf_token (vault it)" in r.out
    assert TOKEN not in r.raw
    assert calls(log)[0]["env"]["HF_TOKEN"] == TOKEN


def test_role_refuses_bad_settings_before_touching_anything(role_env: dict[str, Any]) -> None:
    tmp: Path = role_env["tmp"]
    r = play(role_env, model_cache_source="path", multinode_model="models/tiny", model_cache_storage="local")
    assert r.rc == 2 and "model_cache_source=path serves multinode_model=models/tiny" in r.out, r.out[-3000:]
    assert "set model_cache_source_path to another directory than multinode_model" in r.out
    r = play(role_env, model_cache_source="s3")
    # the validate role the phase runs first stops it (before any node is touched)
    assert r.rc == 2 and "model_cache_source=s3 on node1 (one of hub, path)" in r.out, r.out[-3000:]
    r = play(role_env, model_cache_source="hub", multinode_model="/models/x", model_cache_repo="org/x")
    assert r.rc == 2 and "vLLM finds it there by multinode_model=/models/x" in r.out, r.out[-3000:]
    assert not (tmp / "etc").exists() or not any((tmp / "etc").iterdir())
