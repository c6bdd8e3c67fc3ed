"""Shared unit-test fixtures."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pynvml
import pytest

from multinode_vllm.testbed import fake_nvml


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake libnvidia-ml.so.1, built once and loaded first, so that pynvml binds to it."""
    lib = fake_nvml.build_library(tmp_path_factory.getbasetemp() / "fake-nvml")
    ours = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    pynvml._LoadNvmlLibrary()
    if pynvml.nvmlLib._handle != ours._handle:
        pytest.fail("another libnvidia-ml.so.1 was loaded into this process before the fake: run the NVML tests alone")
    return lib
