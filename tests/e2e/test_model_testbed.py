"""The model phase (playbooks/model.yml) on its own light test bed ``mnv-model`` (2 nodes, no serving).

One ordered story: the tiny Llama, generated into the test bed's shared dir as the source, is
staged with model_cache_storage=shared (copied once, by the head; node2 sees it through the shared
mount) and =local (copied onto each node's own disk; check mode first, which writes nothing; a
damaged local copy healed by a rerun); a truncated shard, a shard missing from the index and a
size that differs from the plan each stop the phase with a message naming node, file and
numbers; the hub source with a stand-in `hf` first on the nodes' PATH (tests/fixtures/fake_hf/hf:
there is no hub here) that records its argv and environment: the token is in the CLI's
environment and never in argv, in the Ansible output (even -vvv, which shows the remote command
lines) or in the nodes' journal; one download on shared storage, one per node, or one staged on
shared storage and copied to every node; teardown keeps the cache. Second runs report
changed=0. Each run's wall time is printed (pytest -s) and kept in RUN_SECONDS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.multinode.vllm.plugins.module_utils._model import read_safetensors_header
from e2e_beds import RECAP

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb

pytestmark = pytest.mark.e2e

NAME = "mnv-model"
FAKE_HF = Path(PROJECT_DIR) / "tests" / "fixtures" / "fake_hf" / "hf"
TOKEN = "hf_mnvE2Esecret0token0not0for0logs"
LOCAL = "/var/lib/mnv-model"  # on each node's own disk (not the shared mount)
CALLS = "/var/tmp/fake-hf-calls.jsonl"  # the stand-in CLI's record, per node
RUN_SECONDS: dict[str, float] = {}
OUTPUTS: list[str] = []  # every run's output: the token must be in none


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.rc = proc.returncode
        self.raw = proc.stdout + proc.stderr
        self.out = " ".join(self.raw.split())  # the yaml callback folds long messages
        self.changed = {m[0]: int(m[2]) for m in RECAP.findall(proc.stdout)}
        self.seconds = seconds

    def detail(self) -> str:
        return self.raw[-5000:]


class Story:
    def __init__(self, bed: tb.Testbed, run_ansible: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        self.bed = bed
        self._run = run_ansible
        self.shared = Path(bed.shared_dir)
        self.source = self.shared / "source" / "tiny-llama"

    def play(self, label: str, *args: str, playbook: str = "playbooks/model.yml", **vars_: Any) -> Run:
        # Variables through a file: a token on ansible-playbook's command line would be in `ps`.
        vfile = self.shared / "vars" / f"{len(RUN_SECONDS):02d}.json"
        vfile.parent.mkdir(parents=True, exist_ok=True)
        vfile.write_text(json.dumps(vars_))
        t0 = time.monotonic()
        proc = self._run(
            "ansible-playbook", "-i", str(self.bed.inventory), playbook, "-e", f"@{vfile}", *args, timeout=600
        )
        run = Run(proc, round(time.monotonic() - t0, 1))
        RUN_SECONDS[label] = run.seconds
        OUTPUTS.append(run.raw)
        print(f"\n[run] {label}: rc={run.rc} changed={run.changed} {run.seconds} s")
        return run

    def sh(self, index: int, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.bed.exec(index, ["sh", "-c", script], check=check)

    def exists(self, index: int, path: str) -> bool:
        return self.sh(index, f"test -e {path}", check=False).returncode == 0

    def calls(self, index: int) -> list[dict[str, Any]]:
        out = self.sh(index, f"cat {CALLS} 2>/dev/null || true").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def story(run_ansible: Callable[..., subprocess.CompletedProcess[str]]) -> Iterator[Story]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/bootstrap (or testbed up --install-deps)")
    spec = tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", local_inventory=False)
    bed = tb.up(spec)
    try:
        s = Story(bed, run_ansible)
        from multinode_vllm.testbed.tinymodel import make_tiny_llama

        t0 = time.monotonic()
        make_tiny_llama(s.source, quiet=True)
        RUN_SECONDS["tiny model (source)"] = round(time.monotonic() - t0, 1)
        yield s
    finally:
        print(f"\n[model phase runs, seconds] {json.dumps(RUN_SECONDS)}")
        if not os.environ.get("MNV_E2E_KEEP"):  # keep it for debugging: MNV_E2E_KEEP=1
            tb.down(NAME, purge=True)


def path_vars(story: Story, model: str, storage: str, source: Path | None = None) -> dict[str, Any]:
    return {
        "model_cache_source": "path",
        "model_cache_storage": storage,
        "model_cache_source_path": str(source) if source else "",
        "multinode_model": model,
    }


def test_shared_storage_copied_once_by_the_head_then_nothing(story: Story) -> None:
    model = str(story.shared / "models-shared" / "tiny-llama")
    v = path_vars(story, model, "shared", story.source)
    first = story.play("path, shared: first run", **v)
    assert first.rc == 0, first.detail()
    assert first.changed == {"node1": 1, "node2": 0}, first.changed  # one copy, by the head
    assert first.out.count("model complete:") == 2  # node2 checked it through the shared mount
    assert story.exists(2, f"{model}/model.safetensors")
    second = story.play("path, shared: second run", **v)
    assert second.rc == 0 and second.changed == {"node1": 0, "node2": 0}, second.detail()


def test_local_storage_check_mode_copies_healing_and_second_run(story: Story) -> None:
    model = f"{LOCAL}/tiny-llama"
    v = path_vars(story, model, "local", story.source)
    check = story.play("path, local: --check", "--check", **v)
    assert check.rc == 0, check.detail()
    assert check.out.count("check mode: the model would be downloaded or copied first") == 2
    assert not story.exists(1, model) and not story.exists(2, model)
    first = story.play("path, local: first run", **v)
    assert first.rc == 0, first.detail()
    assert first.changed == {"node1": 1, "node2": 1}, first.changed
    for i in (1, 2):
        assert story.sh(i, f"stat -c %s {model}/model.safetensors").stdout.strip() == str(
            (story.source / "model.safetensors").stat().st_size
        )
    second = story.play("path, local: second run", **v)
    assert second.rc == 0 and second.changed == {"node1": 0, "node2": 0}, second.detail()
    # a damaged local copy on node2: the rerun copies that file again, only there
    story.sh(2, f"truncate -s -100 {model}/model.safetensors")
    healed = story.play("path, local: rerun after a truncated local copy", **v)
    assert healed.rc == 0 and healed.changed == {"node1": 0, "node2": 1}, healed.detail()


def broken_copy(story: Story, name: str) -> Path:
    dest = story.shared / "broken" / name / "tiny-llama"
    shutil.rmtree(dest.parent, ignore_errors=True)
    shutil.copytree(story.source, dest)
    return dest


def test_truncated_shard_stops_the_phase_naming_the_file(story: Story) -> None:
    model = broken_copy(story, "truncated")
    full = (model / "model.safetensors").stat().st_size
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(full - 100)
    r = story.play("fault: truncated shard", **path_vars(story, str(model), "shared"))
    assert r.rc == 2, r.detail()
    msg = (
        f"The model on node1 at {model} is incomplete: model.safetensors is truncated: {full - 100} bytes, "
        f"its header says {full} (an interrupted download or copy)."
    )
    assert msg in r.out, r.detail()
    print(f"[message] {msg}")


def test_shard_missing_from_the_index_stops_the_phase(story: Story) -> None:
    model = broken_copy(story, "missing")
    _, header = read_safetensors_header(str(model / "model.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in header if k != "__metadata__"}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    r = story.play("fault: shard missing", **path_vars(story, str(model), "shared"))
    assert r.rc == 2, r.detail()
    assert (
        "model-00002-of-00002.safetensors is missing (model.safetensors.index.json assigns 1 tensor to it)" in r.out
    ), r.detail()


def test_size_that_differs_from_the_plan_stops_the_phase(story: Story, tmp_path: Path) -> None:
    config = json.loads((story.source / "config.json").read_text())
    config["num_hidden_layers"] = 8  # the plan of a model with 4 times the layers
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = str(story.shared / "models-shared" / "tiny-llama")  # complete (first test)
    v = {**path_vars(story, model, "shared"), "validate_model_config_path": str(tmp_path / "config.json")}
    r = story.play("fault: size differs from the plan", **v)
    assert r.rc == 2, r.detail()
    m = re.search(
        r"The weights on node1 at \S+ are \d+ bytes .*? (-?[0-9.]+) % off, more than model_cache_size_tolerance=0.1",
        r.out,
    )
    assert m, r.detail()
    assert float(m.group(1)) < -50
    print(f"[message] {m.group(0)}")


@pytest.fixture(scope="module")
def fake_hf(story: Story) -> Story:
    """The stand-in `hf` in /usr/local/bin (first on root's PATH) of both nodes, fed from the source."""
    staged = story.shared / "fake-hf"
    staged.mkdir(exist_ok=True)
    shutil.copy(FAKE_HF, staged / "hf")
    conf = {"source": str(story.source), "log": CALLS}
    (staged / "fake-hf.json").write_text(json.dumps(conf))
    for i in (1, 2):
        story.sh(
            i, f"install -m 0755 {staged}/hf /usr/local/bin/hf && install -m 0644 {staged}/fake-hf.json /usr/local/bin/"
        )
        assert story.sh(i, "command -v hf").stdout.strip() == "/usr/local/bin/hf"
    return story


def hub_vars(home: str, storage: str, shared_home: str = "") -> dict[str, Any]:
    return {
        "model_cache_source": "hub",
        "model_cache_storage": storage,
        "model_cache_shared_hf_home": shared_home,
        "model_cache_hub_cli": "hf",
        "multinode_model": "mnv-test/tiny-llama",
        "multinode_hf_home": home,
        "multinode_hf_token": TOKEN,
    }


def reset_calls(story: Story) -> None:
    for i in (1, 2):
        story.sh(i, f"rm -f {CALLS}")


def test_hub_on_shared_storage_one_download_token_only_in_the_environment(fake_hf: Story) -> None:
    s = fake_hf
    reset_calls(s)
    home = str(s.shared / "hf-shared")
    v = hub_vars(home, "shared")
    first = s.play("hub, shared: first run (-vvv)", "-vvv", **v)
    assert first.rc == 0, first.detail()
    assert first.changed == {"node1": 1, "node2": 0}, first.changed
    (call,) = s.calls(1)
    assert s.calls(2) == []  # node2 reads the head's download through the shared mount
    assert call["env"]["HF_TOKEN"] == TOKEN and call["env"]["HF_HOME"] == home
    assert TOKEN not in " ".join(call["argv"])
    assert call["argv"][1:] == ["download", "mnv-test/tiny-llama", "--revision", "main", "--exclude", "original/*"]
    assert TOKEN not in first.raw
    second = s.play("hub, shared: second run (-v)", "-v", **v)
    assert second.rc == 0 and second.changed == {"node1": 0, "node2": 0}, second.detail()
    assert len(s.calls(1)) == 1  # complete in the cache: no second download


def test_hub_local_downloaded_by_every_node(fake_hf: Story) -> None:
    s = fake_hf
    reset_calls(s)
    v = hub_vars(f"{LOCAL}/hf", "local")
    first = s.play("hub, local, per node: first run", **v)
    assert first.rc == 0 and first.changed == {"node1": 1, "node2": 1}, first.detail()
    assert len(s.calls(1)) == 1 and len(s.calls(2)) == 1
    second = s.play("hub, local, per node: second run", **v)
    assert second.rc == 0 and second.changed == {"node1": 0, "node2": 0}, second.detail()
    assert len(s.calls(1)) == 1 and len(s.calls(2)) == 1


def test_hub_local_staged_once_on_shared_storage_then_copied(fake_hf: Story) -> None:
    s = fake_hf
    reset_calls(s)
    v = hub_vars(f"{LOCAL}/hf-copied", "local", shared_home=str(s.shared / "hf-stage"))
    first = s.play("hub, local, copied from shared: first run", **v)
    assert first.rc == 0, first.detail()
    assert first.changed == {"node1": 2, "node2": 1}, first.changed  # download + copy; copy
    assert len(s.calls(1)) == 1 and s.calls(2) == []
    snap = f"{LOCAL}/hf-copied/hub/models--mnv-test--tiny-llama/snapshots"
    link = s.sh(2, f"readlink {snap}/*/config.json").stdout.strip()
    assert link.startswith("../../blobs/"), link  # the cache layout kept: links to blobs
    second = s.play("hub, local, copied from shared: second run", **v)
    assert second.rc == 0 and second.changed == {"node1": 0, "node2": 0}, second.detail()


def test_the_token_is_in_no_output_and_no_node_journal(fake_hf: Story) -> None:
    assert len(OUTPUTS) >= 6
    assert not [i for i, out in enumerate(OUTPUTS) if TOKEN in out]
    for i in (1, 2):
        hits = fake_hf.sh(i, f"journalctl --no-pager -o cat | grep -c {TOKEN} || true").stdout.strip()
        assert hits == "0", f"node{i} journal holds the token {hits} times"
        assert TOKEN not in fake_hf.sh(i, "ps -eo args").stdout


def test_teardown_keeps_the_model_cache(story: Story) -> None:
    r = story.play("teardown", playbook="playbooks/teardown.yml")
    assert r.rc == 0, r.detail()
    assert (story.shared / "models-shared" / "tiny-llama" / "model.safetensors").exists()
    for i in (1, 2):
        assert story.exists(i, f"{LOCAL}/tiny-llama/model.safetensors")
        assert story.exists(i, f"{LOCAL}/hf/hub/models--mnv-test--tiny-llama")
