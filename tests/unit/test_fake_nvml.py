"""The fake NVML library and its helper: built with cc, loaded by the real pynvml.

The library is preloaded into this process (``RTLD_GLOBAL``) before pynvml opens
``libnvidia-ml.so.1`` by name: glibc then hands pynvml the already loaded object with that
SONAME. ``FAKE_NVML_CONFIG`` is re-read at every first nvmlInit, so each test writes its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from multinode_vllm.testbed import fake_nvml

# Every symbol pynvml calls for what gpu_facts reads (pynvml 13.x names).
PYNVML_SYMBOLS = [
    "nvmlInitWithFlags",
    "nvmlInit_v2",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlSystemGetCudaDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetPersistenceMode",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetGpuFabricInfo",
    "nvmlDeviceGetGpuFabricInfoV",
]


@pytest.fixture
def nvml(fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Write a config (make_config kwargs, or cfg=dict) and point FAKE_NVML_CONFIG at it."""

    def configure(cfg: dict[str, Any] | None = None, **kwargs: Any) -> Path:
        path = tmp_path / "nvml.json"
        fake_nvml.write_config(path, cfg if cfg is not None else fake_nvml.make_config(**kwargs))
        monkeypatch.setenv("FAKE_NVML_CONFIG", str(path))
        return path

    yield configure
    # leave NVML uninitialised for the next test, however this one ended
    while True:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            break


# --- build_library ---------------------------------------------------------------------------


def test_build_gives_a_library_named_like_the_driver_s(fake_lib: Path) -> None:
    assert fake_lib.name == "libnvidia-ml.so.1"
    assert fake_nvml.SOURCE.is_file()
    lib = ctypes.CDLL(str(fake_lib))
    missing = [s for s in PYNVML_SYMBOLS if not hasattr(lib, s)]
    assert missing == []


def test_build_reuses_an_up_to_date_library_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    src = tmp_path / "fake_nvml.c"
    shutil.copy2(fake_nvml.SOURCE, src)
    out = tmp_path / "out"
    lib = fake_nvml.build_library(out, source=src)
    first = lib.stat().st_mtime_ns
    assert fake_nvml.build_library(out, source=src).stat().st_mtime_ns == first
    later = lib.stat().st_mtime + 10
    os.utime(src, (later, later))
    assert fake_nvml.build_library(out, source=src).stat().st_mtime_ns != first
    assert [p.name for p in out.iterdir()] == ["libnvidia-ml.so.1"]  # no temporary left


def test_build_reports_a_compile_error(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int nvmlInit(void) { return }\n")
    with pytest.raises(fake_nvml.FakeNvmlBuildError, match="failed"):
        fake_nvml.build_library(tmp_path / "out", source=src)
    assert not (tmp_path / "out" / "libnvidia-ml.so.1").exists()


def test_build_without_a_compiler_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(fake_nvml.FakeNvmlBuildError, match="no C compiler"):
        fake_nvml.build_library(tmp_path / "out")


# --- make_config / write_config --------------------------------------------------------------


def test_make_config_describes_an_hgx_node() -> None:
    cfg = fake_nvml.make_config(down_links={3: [5]}, seed="node1")
    assert cfg["driver_version"] == "550.127.05" and cfg["cuda_driver_version"] == 12040
    assert len(cfg["gpus"]) == 8
    assert all(len(g["nvlinks"]) == 18 for g in cfg["gpus"])
    assert [i for i, up in enumerate(cfg["gpus"][3]["nvlinks"]) if not up] == [5]
    assert sum(up for g in cfg["gpus"] for up in g["nvlinks"]) == 143
    assert cfg["gpus"][0]["memory_total"] == 80 * 2**30
    assert len({g["uuid"] for g in cfg["gpus"]}) == 8
    # stable per node, different between nodes
    assert cfg["gpus"][0]["uuid"] == fake_nvml.make_config(seed="node1")["gpus"][0]["uuid"]
    assert cfg["gpus"][0]["uuid"] != fake_nvml.make_config(seed="node2")["gpus"][0]["uuid"]
    assert "fail" not in cfg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"down_links": {8: [0]}}, "GPU 8"),
        ({"down_links": {0: [18]}}, r"link\(s\) \[18\]"),
        ({"nvlinks_per_gpu": 37}, "0..36"),
        ({"fabric_state": "done"}, "fabric_state"),
    ],
)
def test_make_config_refuses_what_the_library_cannot_show(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fake_nvml.make_config(**kwargs)


def test_write_config_writes_json(tmp_path: Path) -> None:
    cfg = fake_nvml.make_config(gpu_count=2, fail={"nvmlInit": 9})
    path = fake_nvml.write_config(tmp_path / "etc" / "config.json", cfg)
    assert json.loads(path.read_text()) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


# --- the library through the real pynvml -----------------------------------------------------


def test_reads_what_the_config_says(nvml: Callable[..., Path]) -> None:
    cfg = fake_nvml.make_config(gpu_count=4, memory_gib=141, name="NVIDIA H200", down_links={2: [0, 17]})
    cfg["gpus"][1]["memory_used"] = 1234567
    nvml(cfg)
    pynvml.nvmlInit()
    assert pynvml.nvmlSystemGetDriverVersion() == "550.127.05"
    assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12040
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.127.05"
    assert pynvml.nvmlDeviceGetCount() == 4
    h = pynvml.nvmlDeviceGetHandleByIndex(1)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H200"
    assert pynvml.nvmlDeviceGetUUID(h) == cfg["gpus"][1]["uuid"]
    assert pynvml.nvmlDeviceGetIndex(h) == 1
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    assert (mem.total, mem.used, mem.free) == (141 * 2**30, 1234567, 141 * 2**30 - 1234567)
    mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem2.total, mem2.used) == (141 * 2**30, 1234567)
    pci = pynvml.nvmlDeviceGetPciInfo(h)
    assert (pci.busId, pci.bus, pci.domain) == (cfg["gpus"][1]["pci_bus_id"], 0x2A, 0)
    h2 = pynvml.nvmlDeviceGetHandleByUUID(cfg["gpus"][2]["uuid"])
    states = [pynvml.nvmlDeviceGetNvLinkState(h2, link) for link in range(18)]
    assert [i for i, s in enumerate(states) if not s] == [0, 17]
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetNvLinkState(h2, 18)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetNvLinkState(h2, pynvml.NVML_NVLINK_MAX_LINKS)
    pynvml.nvmlShutdown()


def test_fabric_info_versions(nvml: Callable[..., Path]) -> None:
    cfg = fake_nvml.make_config(gpu_count=2)
    cfg["gpus"][1]["fabric_state"] = "in_progress"
    nvml(cfg)
    pynvml.nvmlInit()
    h0, h1 = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
    v2 = pynvml.c_nvmlGpuFabricInfoV_t()
    pynvml.nvmlDeviceGetGpuFabricInfoV(h0, ctypes.byref(v2))
    assert (v2.state, v2.status) == (pynvml.NVML_GPU_FABRIC_STATE_COMPLETED, 0)
    v3 = pynvml.c_nvmlGpuFabricInfo_v3_t()
    pynvml.nvmlDeviceGetGpuFabricInfoV(h0, ctypes.byref(v3))
    assert v3.healthSummary == pynvml.NVML_GPU_FABRIC_HEALTH_SUMMARY_HEALTHY
    pynvml.nvmlDeviceGetGpuFabricInfoV(h1, ctypes.byref(v2))
    assert v2.state == pynvml.NVML_GPU_FABRIC_STATE_IN_PROGRESS
    bad = pynvml.c_nvmlGpuFabricInfoV_t()
    bad.version = 0x01000010
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetGpuFabricInfoV(h0, ctypes.byref(bad))
    pynvml.nvmlShutdown()


def test_no_fabric_state_reads_as_not_supported(nvml: Callable[..., Path]) -> None:
    nvml(gpu_count=1, fabric_state=None, nvlinks_per_gpu=0)
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuFabricInfoV(h, ctypes.byref(pynvml.c_nvmlGpuFabricInfoV_t()))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetNvLinkState(h, 0)
    pynvml.nvmlShutdown()


def test_calls_before_init_and_after_shutdown_are_uninitialized(nvml: Callable[..., Path]) -> None:
    nvml(gpu_count=1)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    pynvml.nvmlInit()
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 1  # still one reference
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_missing_config_is_a_driver_not_loaded(
    nvml: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(tmp_path / "absent.json"))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_injected_init_error_then_recovery(nvml: Callable[..., Path]) -> None:
    path = nvml(gpu_count=2, fail={"nvmlInit": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH})
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch):
        pynvml.nvmlInit()
    fake_nvml.write_config(path, fake_nvml.make_config(gpu_count=2))
    pynvml.nvmlInit()  # the config is read again at the next first init
    assert pynvml.nvmlDeviceGetCount() == 2
    pynvml.nvmlShutdown()


def test_injected_errors_cover_the_family_and_one_gpu(nvml: Callable[..., Path]) -> None:
    cfg = fake_nvml.make_config(gpu_count=3, fail={"nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_TIMEOUT})
    cfg["gpus"][2]["fail"] = {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST}
    nvml(cfg)
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlDeviceGetMemoryInfo(h)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(1)) == "NVIDIA H100 80GB HBM3"
    with pytest.raises(pynvml.NVMLError_GpuIsLost) as lost:
        pynvml.nvmlDeviceGetHandleByIndex(2)
    assert str(lost.value) == "GPU is lost"
    pynvml.nvmlShutdown()


def test_malformed_config_fails_init_and_says_where(
    nvml: Callable[..., Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = nvml(gpu_count=1)
    path.write_text('{"gpus": [{"name": "x", "nvlinks": [true, maybe]}]}')
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    err = capfd.readouterr().err
    assert f"fake-nvml: {path}: true, false or null expected at byte" in err
