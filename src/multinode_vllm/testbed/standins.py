"""Hardware stand-ins the test bed installs in every node (test fixtures, never product branches).

- the fake NVML library (``multinode_vllm.testbed.fake_nvml``) as
  ``/opt/fake-nvml/lib/libnvidia-ml.so.1`` (found through ld.so.conf.d + ldconfig, as a driver's
  would be) with its per-node configuration in ``/etc/fake-nvml/config.json``;
- the fake InfiniBand sysfs tree (``multinode_vllm.testbed.fake_ib``) under ``/opt/fake-sysfs``
  (the inventory's ``preflight_ib_sysfs_root``).

Tests change one node's hardware with ``set_nvml`` / ``set_ib`` (a NVLink down, another driver).
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from multinode_vllm.testbed.podman import TestbedError, podman, tar_pipe

NVML_LIB = "/opt/fake-nvml/lib/libnvidia-ml.so.1"
NVML_LDCONF = "/etc/ld.so.conf.d/fake-nvml.conf"
NVML_CONFIG = "/etc/fake-nvml/config.json"
IB_ROOT = "/opt/fake-sysfs"


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"multinode_vllm.testbed.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"multinode_vllm.testbed.{name}":
            raise
        return None


def _container(name: str, node_index: int) -> str:
    return f"{name}-node{node_index}"


def prepare_host(sdir: Path, gpus: int, *, warn: bool = True) -> Path:
    """Stage the node files once on the host (``<state dir>/node-files``); return the stage dir."""
    stage = sdir / "node-files"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    fake_nvml = _module("fake_nvml")
    if fake_nvml is None:
        if warn:
            print("[testbed] fake_nvml not available: nodes get no NVML stand-in", file=sys.stderr)
    else:
        built = Path(fake_nvml.build_library(sdir / "fake-nvml-build"))
        lib = stage / NVML_LIB.lstrip("/")
        lib.parent.mkdir(parents=True)
        shutil.copy2(built, lib)
        conf = stage / NVML_LDCONF.lstrip("/")
        conf.parent.mkdir(parents=True)
        conf.write_text(str(Path(NVML_LIB).parent) + "\n")
        cfg_path = stage / NVML_CONFIG.lstrip("/")
        cfg_path.parent.mkdir(parents=True)
        fake_nvml.write_config(cfg_path, fake_nvml.make_config(gpu_count=gpus))
    fake_ib = _module("fake_ib")
    if fake_ib is None:
        if warn:
            print("[testbed] fake_ib not available: nodes get no IB sysfs stand-in", file=sys.stderr)
    else:
        root = stage / IB_ROOT.lstrip("/")
        root.mkdir(parents=True)
        fake_ib.write_tree(root, hcas=8, state="ACTIVE", rate_gbps=400)
    return stage


def _tar_into(container: str, stage: Path, dest: str = "/") -> None:
    tops = sorted(p.name for p in stage.iterdir())
    if not tops:
        return
    proc = tar_pipe(stage, tops, ["podman", "exec", "-i", container, "tar", "-x", "--no-overwrite-dir", "-C", dest])
    if proc.returncode != 0:
        raise TestbedError(f"copying stand-ins into {container} failed: {proc.stderr.strip()}")


def install(container: str, stage: Path) -> None:
    """Copy the staged files into one node and register the library with ldconfig."""
    _tar_into(container, stage)
    if (stage / NVML_LIB.lstrip("/")).exists():
        podman("exec", container, "ldconfig")


def _node_file(name: str, node_index: int, path: str, text: str) -> None:
    # atomic replace: a reader (nvmlInit) never sees half a file
    podman(
        "exec",
        "-i",
        _container(name, node_index),
        "python3",
        "-c",
        "import os, sys; p = sys.argv[1]; os.makedirs(os.path.dirname(p), exist_ok=True); "
        "open(p + '.tmp', 'w').write(sys.stdin.read()); os.replace(p + '.tmp', p)",
        path,
        input=text,
    )


def set_nvml(name: str, node_index: int, cfg: dict[str, Any]) -> None:
    """Replace the fake NVML configuration of one node (see ``fake_nvml.make_config``)."""
    fake_nvml = _module("fake_nvml")
    if fake_nvml is None:
        raise TestbedError("multinode_vllm.testbed.fake_nvml is missing")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        fake_nvml.write_config(path, cfg)
        _node_file(name, node_index, NVML_CONFIG, path.read_text())


def get_nvml(name: str, node_index: int) -> dict[str, Any]:
    out = podman("exec", _container(name, node_index), "cat", NVML_CONFIG)
    data: dict[str, Any] = json.loads(out)
    return data


def set_ib(name: str, node_index: int, **tree_args: Any) -> None:
    """Rewrite one node's fake IB sysfs tree (``fake_ib.write_tree`` arguments, e.g. state='DOWN')."""
    fake_ib = _module("fake_ib")
    if fake_ib is None:
        raise TestbedError("multinode_vllm.testbed.fake_ib is missing")
    container = _container(name, node_index)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / IB_ROOT.lstrip("/")
        root.mkdir(parents=True)
        fake_ib.write_tree(root, **{"hcas": 8, "state": "ACTIVE", "rate_gbps": 400, **tree_args})
        podman("exec", container, "rm", "-rf", IB_ROOT)
        _tar_into(container, Path(tmp))
