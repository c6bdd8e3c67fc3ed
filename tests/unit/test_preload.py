"""The preload callback (plugins/callback/preload.py): the collection's filter, lookup and action
plugins are imported once in the controller, so the forked workers inherit them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ansible_collections.multinode.vllm.plugins.callback import preload
from ansible_run import ansible_playbook

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
PLUGINS = ROOT / "plugins"
PKG = "ansible_collections.multinode.vllm.plugins"


def test_every_filter_lookup_and_action_plugin_is_listed_once() -> None:
    names = preload.plugin_modules(PLUGINS)
    expected = {
        f"{PKG}.{kind}.{p.stem}"
        for kind in ("filter", "lookup", "action")
        for p in (PLUGINS / kind).glob("*.py")
        if not p.name.startswith("_")
    }
    assert set(names) == expected
    assert len(names) == len(set(names))
    assert f"{PKG}.filter.units" in names and f"{PKG}.action.validate_cluster" in names
    assert f"{PKG}.lookup.api_key" in names
    assert not any(".modules." in n or ".module_utils." in n for n in names)


def test_preload_imports_them_all_in_this_process() -> None:
    # a fresh interpreter: nothing of the collection's plugins imported before
    code = (
        "import sys, pathlib\n"
        "from ansible_collections.multinode.vllm.plugins.callback import preload\n"
        f"before = [n for n in preload.plugin_modules(pathlib.Path({str(PLUGINS)!r})) if n in sys.modules]\n"
        f"failed = preload.preload(pathlib.Path({str(PLUGINS)!r}))\n"
        f"after = [n for n in preload.plugin_modules(pathlib.Path({str(PLUGINS)!r})) if n not in sys.modules]\n"
        "print(len(before), failed, after)\n"
    )
    env = {"PYTHONPATH": str(ROOT / "collections"), "PATH": str(ROOT / ".venv/bin")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert out.stdout.strip() == "0 [] []", out.stdout + out.stderr


def test_a_plugin_that_does_not_import_is_named_and_the_rest_still_load(tmp_path: Path) -> None:
    (tmp_path / "filter").mkdir()
    (tmp_path / "filter" / "no_such_plugin_here.py").write_text("raise ImportError('broken')\n")
    (tmp_path / "filter" / "_private.py").write_text("")
    assert preload.plugin_modules(tmp_path) == [f"{PKG}.filter.no_such_plugin_here"]
    assert preload.preload(tmp_path) == [f"{PKG}.filter.no_such_plugin_here"]


def test_the_project_config_enables_it_and_playbooks_run_as_before(tmp_path: Path) -> None:
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"gpus={{ [{'multinode_node_gpus': 2}, {'multinode_node_gpus': 3}]"
        ' | multinode.vllm.cluster_gpus }}"\n'
    )
    run = ansible_playbook("-i", "localhost,", "-c", "local", str(play))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "gpus=5" in run.stdout
    config = subprocess.run(
        [str(ROOT / ".venv/bin/ansible-config"), "dump", "--only-changed"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": str(ROOT / ".venv/bin")},
    )
    assert "multinode.vllm.preload" in config.stdout
