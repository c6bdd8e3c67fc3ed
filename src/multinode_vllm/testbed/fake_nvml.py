"""The fake NVML library: build it, and write the JSON that describes a node's GPUs.

The library (``tests/fixtures/fake_nvml/fake_nvml.c``) is named ``libnvidia-ml.so.1`` and is
loaded by the real pynvml as a driver's library would be. It reads ``$FAKE_NVML_CONFIG``, else
``/etc/fake-nvml/config.json``, at each first ``nvmlInit``; a missing file reads as a host whose
driver is not loaded (``NVML_ERROR_DRIVER_NOT_LOADED``). Schema: ``make_config`` and the README
next to the C source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from multinode_vllm import PROJECT_DIR

SOURCE = PROJECT_DIR / "tests" / "fixtures" / "fake_nvml" / "fake_nvml.c"
LIBRARY_NAME = "libnvidia-ml.so.1"
DEFAULT_CONFIG_PATH = "/etc/fake-nvml/config.json"

# NVML return codes the config's "fail" map takes (pynvml.NVML_ERROR_*).
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

FABRIC_STATES = ("not_supported", "not_started", "in_progress", "completed")

# PCI buses of the eight SXM GPUs of an HGX H100 board, as nvidia-smi lists them.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)

_UUID_NAMESPACE = uuid.UUID("6f1d3c52-5b0e-4c1e-9b7e-1e4f2c6a8d10")


class FakeNvmlBuildError(RuntimeError):
    """The fake library could not be compiled (no C compiler, or a compile error)."""


def _compiler() -> str:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise FakeNvmlBuildError(
        "no C compiler found (tried $CC, cc, gcc, clang): the fake NVML library is built from "
        f"{SOURCE}; install one, e.g. `apt-get install gcc`"
    )


def build_library(dest_dir: Path, source: Path | None = None) -> Path:
    """Compile ``source`` (default SOURCE) into ``dest_dir/libnvidia-ml.so.1`` unless it is up to date."""
    source = Path(source) if source is not None else SOURCE
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    lib = dest_dir / LIBRARY_NAME
    if lib.exists() and lib.stat().st_mtime >= source.stat().st_mtime:
        return lib
    cc = _compiler()
    # compile beside the target and rename: a concurrent build or a loader never sees half a file
    fd, tmp_name = tempfile.mkstemp(prefix=".fake-nvml-", suffix=".so", dir=dest_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    argv = [
        cc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        f"-Wl,-soname,{LIBRARY_NAME}",
        "-o",
        str(tmp),
        str(source),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise FakeNvmlBuildError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n{proc.stderr.strip()}")
        tmp.chmod(0o755)
        os.replace(tmp, lib)
    finally:
        tmp.unlink(missing_ok=True)
    return lib


def gpu_uuid(seed: str, index: int) -> str:
    """A stable NVML-style UUID (``GPU-xxxxxxxx-…``) for GPU ``index`` of node ``seed``."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{seed}/{index}')}"


def pci_bus_id(index: int) -> str:
    bus = _HGX_BUSES[index] if index < len(_HGX_BUSES) else 0x10 + index
    return f"00000000:{bus:02X}:00.0"


def make_config(
    gpu_count: int = 8,
    name: str = "NVIDIA H100 80GB HBM3",
    memory_gib: float = 80,
    driver_version: str = "550.127.05",
    cuda_driver_version: int = 12040,
    nvlinks_per_gpu: int = 18,
    down_links: dict[int, list[int]] | None = None,
    fail: dict[str, int] | None = None,
    *,
    fabric_state: str | None = "completed",
    memory_used: int = 0,
    seed: str = "node",
) -> dict[str, Any]:
    """The configuration of one node's fake GPUs.

    ``down_links`` maps a GPU index to the NVLink numbers that are inactive. ``fail`` maps an NVML
    function (``nvmlInit``, ``nvmlDeviceGetHandleByIndex``, … a family name covers its ``_v2`` and
    ``WithFlags`` forms) to the NVML error code it returns. ``fabric_state`` None: the fabric call
    answers NOT_SUPPORTED (a PCIe card). ``seed`` makes the UUIDs differ between nodes.
    """
    if not 0 <= gpu_count <= 64:
        raise ValueError(f"gpu_count must be 0..64, got {gpu_count}")
    if not 0 <= nvlinks_per_gpu <= 36:
        raise ValueError(f"nvlinks_per_gpu must be 0..36 (NVML_NVLINK_MAX_LINKS), got {nvlinks_per_gpu}")
    if fabric_state is not None and fabric_state not in FABRIC_STATES:
        raise ValueError(f"fabric_state must be one of {FABRIC_STATES} or None, got {fabric_state!r}")
    down = {int(k): {int(x) for x in v} for k, v in (down_links or {}).items()}
    for index, links in down.items():
        if not 0 <= index < gpu_count:
            raise ValueError(f"down_links names GPU {index}, but there are {gpu_count} GPUs")
        bad = sorted(x for x in links if not 0 <= x < nvlinks_per_gpu)
        if bad:
            raise ValueError(f"down_links names link(s) {bad} of GPU {index}, which has {nvlinks_per_gpu}")
    total = int(memory_gib * 2**30)
    gpus = []
    for i in range(gpu_count):
        gpu: dict[str, Any] = {
            "name": name,
            "uuid": gpu_uuid(seed, i),
            "memory_total": total,
            "memory_used": int(memory_used),
            "pci_bus_id": pci_bus_id(i),
            "nvlinks": [link not in down.get(i, set()) for link in range(nvlinks_per_gpu)],
        }
        if fabric_state is not None:
            gpu["fabric_state"] = fabric_state
        gpus.append(gpu)
    cfg: dict[str, Any] = {
        "driver_version": driver_version,
        "cuda_driver_version": int(cuda_driver_version),
        "gpus": gpus,
    }
    if fail:
        cfg["fail"] = {str(k): int(v) for k, v in fail.items()}
    return cfg


def write_config(path: Path | str, cfg: dict[str, Any]) -> Path:
    """Write ``cfg`` as JSON to ``path`` atomically (a concurrent nvmlInit never reads half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(cfg, indent=1) + "\n")
    os.replace(tmp, path)
    return path
