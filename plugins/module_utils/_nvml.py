# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of the ``gpu_facts`` module: read GPUs through NVML, check them, word failures.

The pynvml module is a parameter (``nvml``), never imported here: the module guards that import,
and the tests hand in the real pynvml bound to a fake ``libnvidia-ml.so.1``. Every failure names
the GPU (index and UUID) and, for NVLink, the link, and says which phase fixes it.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

PREPARE_HINT = (
    "Install and load the driver with the prepare phase: `ansible-playbook site.yml --tags prepare` "
    "(role nvidia_driver), then check `nvidia-smi` on the node."
)
FABRIC_HINT = "Check the NVLink/NVSwitch fabric and nvidia-fabricmanager (prepare phase)."

# NVML return codes (nvml.h); the names are pynvml's.
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}
NVLINK_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS; older pynvml releases say 18 or 12

_INIT_CAUSES = {
    NVML_ERROR_LIBRARY_NOT_FOUND: (
        "the NVML library libnvidia-ml.so.1 is not found: no NVIDIA driver is installed on this host."
    ),
    NVML_ERROR_DRIVER_NOT_LOADED: (
        "the NVIDIA driver is not loaded (NVML: Driver Not Loaded): the kernel module is missing or was "
        "not loaded, typically because the node was not rebooted after the driver install, or Secure "
        "Boot rejected the unsigned module."
    ),
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVML library and the loaded kernel module are different driver versions (the driver was "
        "upgraded without a reboot): reboot the node."
    ),
    NVML_ERROR_NO_PERMISSION: (
        "no permission to open /dev/nvidia* (NVML: Insufficient Permissions): run the module as root (become: true)."
    ),
}


class NvmlUnavailable(Exception):
    """NVML could not be initialised: no driver, driver not loaded, version mismatch, …"""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    """``Driver Not Loaded (NVMLError_DriverNotLoaded, code 9)``; str() of an NVMLError can fail."""
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ calls into the library, which may be half loaded
        text = ""
    code = _code(exc)
    detail = type(exc).__name__ + ("" if code is None else f", code {code}")
    return f"{text} ({detail})" if text else detail


def init_failure_message(exc: BaseException) -> str:
    """What a failed ``nvmlInit`` means for the operator, and which phase fixes it."""
    code = _code(exc)
    cause = _INIT_CAUSES.get(code if code is not None else -1)
    if cause is None:
        cause = f"NVML initialisation failed: {_describe(exc)}."
    return f"Cannot read the GPUs through NVML: {cause} {PREPARE_HINT}"


def cuda_version_text(version: int | None) -> str | None:
    """12040 -> '12.4' (NVML gives major*1000 + minor*10)."""
    if not version:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def _cuda_driver_version(nvml: Any) -> int | None:
    for name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            return int(fn())
        except nvml.NVMLError as exc:
            if _code(exc) != NVML_ERROR_FUNCTION_NOT_FOUND:
                return None
    return None


def _nvlinks(nvml: Any, handle: Any) -> dict[str, Any]:
    """States of all links: NOT_SUPPORTED skips a link, INVALID_ARGUMENT ends the list."""
    max_links = max(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS)), NVLINK_MAX_LINKS)
    active: list[int] = []
    inactive: list[int] = []
    for link in range(max_links):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError as exc:
            code = _code(exc)
            if code == NVML_ERROR_NOT_SUPPORTED:
                continue
            if code in (NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_FUNCTION_NOT_FOUND):
                break
            raise
        (active if state else inactive).append(link)
    return {"total": len(active) + len(inactive), "active": len(active), "inactive": inactive}


def _fabric(nvml: Any, handle: Any) -> tuple[str, str | None]:
    """(fabric state, error of a completed registration) through nvmlDeviceGetGpuFabricInfoV."""
    fn = getattr(nvml, "nvmlDeviceGetGpuFabricInfoV", None)
    info_cls = getattr(nvml, "c_nvmlGpuFabricInfoV_t", None)
    if fn is None or info_cls is None:
        return "unknown", None
    info = info_cls()
    try:
        fn(handle, ctypes.byref(info))
    except nvml.NVMLError as exc:
        if _code(exc) in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
            return "not_supported", None
        return "unknown", None
    state = FABRIC_STATES.get(int(info.state), f"state_{int(info.state)}")
    error = None
    if state == "completed" and int(info.status) != 0:
        error = _describe(nvml.NVMLError(int(info.status)))
    return state, error


def _read_gpu(nvml: Any, index: int) -> dict[str, Any]:
    gpu: dict[str, Any] = {
        "index": index,
        "name": None,
        "uuid": None,
        "memory_total": 0,
        "memory_used": 0,
        "pci_bus_id": None,
        "nvlinks": {"total": 0, "active": 0, "inactive": []},
        "fabric_state": "unknown",
        "fabric_error": None,
        "error": None,
    }
    step = "open it"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        step = "read its name"
        gpu["name"] = _text(nvml.nvmlDeviceGetName(handle))
        step = "read its UUID"
        gpu["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
        step = "read its memory"
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        gpu["memory_total"] = int(mem.total)
        gpu["memory_used"] = int(mem.used)
        step = "read its PCI address"
        try:
            gpu["pci_bus_id"] = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        except nvml.NVMLError as exc:
            if _code(exc) not in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                raise
        step = "read its NVLink states"
        gpu["nvlinks"] = _nvlinks(nvml, handle)
        step = "read its fabric state"
        gpu["fabric_state"], gpu["fabric_error"] = _fabric(nvml, handle)
    except nvml.NVMLError as exc:
        gpu["error"] = (
            f"NVML cannot {step}: {_describe(exc)}. Check `nvidia-smi` and `dmesg` (Xid errors) on the "
            "node; a lost GPU needs a reset or a reboot."
        )
    return gpu


def read_gpus(nvml: Any) -> dict[str, Any]:
    """The ``multinode_gpu`` facts, read through ``nvml`` (the pynvml module).

    Raises NvmlUnavailable (with the operator's message) when NVML cannot be initialised. A GPU
    that cannot be read carries an ``error`` instead of stopping the read of the others.
    """
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(init_failure_message(exc)) from exc
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = _cuda_driver_version(nvml)
        count = int(nvml.nvmlDeviceGetCount())
        gpus = [_read_gpu(nvml, i) for i in range(count)]
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(
            f"Cannot read the GPUs through NVML after it initialised: {_describe(exc)}. {PREPARE_HINT}"
        ) from exc
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    return summarize(driver, cuda, gpus)


def summarize(driver: str, cuda: int | None, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    readable = [g for g in gpus if g.get("error") is None]
    return {
        "count": len(gpus),
        "driver_version": driver,
        "cuda_version": cuda_version_text(cuda),
        "cuda_driver_version": cuda,
        "gpus": gpus,
        "nvlink_total": sum(g["nvlinks"]["total"] for g in gpus),
        "nvlink_active": sum(g["nvlinks"]["active"] for g in gpus),
        "memory_total_min": min((g["memory_total"] for g in readable), default=0),
    }


def _who(gpu: dict[str, Any]) -> str:
    uuid = gpu.get("uuid")
    return f"GPU {gpu['index']} ({uuid})" if uuid else f"GPU {gpu['index']}"


def _links_text(links: list[int]) -> str:
    if len(links) == 1:
        return f"NVLink {links[0]} is inactive"
    return "NVLinks " + ", ".join(str(x) for x in links) + " are inactive"


def driver_matches(installed: str, expected: str) -> bool:
    """'550.127.05' matches '550.127.05', '550.127' and '550' (a branch), not '550.12'."""
    expected = expected.strip()
    return installed == expected or installed.startswith(expected + ".")


def check_gpus(
    facts: dict[str, Any],
    expected_count: int | None = None,
    require_nvlink: bool = False,
    expected_driver: str | None = None,
) -> list[str]:
    """The problems of ``facts`` (from read_gpus), one sentence each; empty when all is well."""
    errors: list[str] = []
    count = facts["count"]
    if expected_count is not None and count != expected_count:
        hint = (
            "A GPU may have fallen off the bus (check `nvidia-smi`, `lspci | grep -i nvidia` and "
            "`dmesg` for Xid 79) or the inventory's GPU count is wrong."
            if count < expected_count
            else "The inventory's GPU count is lower than what the node has: fix expected_gpu_count."
        )
        errors.append(f"NVML sees {count} GPUs, expected {expected_count}. {hint}")
    if expected_driver and not driver_matches(facts["driver_version"], expected_driver):
        errors.append(
            f"NVIDIA driver {facts['driver_version']} is installed, expected {expected_driver}. Install "
            f"{expected_driver} with the prepare phase (`ansible-playbook site.yml --tags prepare`, "
            "role nvidia_driver) and reboot; every node must run the same driver."
        )
    for gpu in facts["gpus"]:
        who = _who(gpu)
        if gpu.get("error"):
            errors.append(f"{who}: {gpu['error']}")
            continue
        links = gpu["nvlinks"]
        if require_nvlink:
            if links["total"] == 0:
                errors.append(
                    f"{who}: NVML reports no NVLink (a PCIe card or NVLink disabled), but "
                    f"require_nvlink is set. {FABRIC_HINT}"
                )
            elif links["inactive"]:
                errors.append(
                    f"{who}: {_links_text(links['inactive'])}; {links['active']} of {links['total']} "
                    f"links active. {FABRIC_HINT}"
                )
        state = gpu.get("fabric_state")
        if state in ("not_started", "in_progress"):
            errors.append(
                f"{who}: GPU fabric registration is {state.replace('_', ' ')}: nvidia-fabricmanager is "
                "not running or has not finished, and CUDA will not start on this GPU. Start "
                "nvidia-fabricmanager (installed by the prepare phase, role nvidia_driver) and wait for "
                "the state to become completed."
            )
        elif gpu.get("fabric_error"):
            errors.append(f"{who}: GPU fabric registration failed: {gpu['fabric_error']}. {FABRIC_HINT}")
    return errors


def summary_line(facts: dict[str, Any]) -> str:
    """One line on what NVML sees, e.g. '8 x NVIDIA H100 80GB HBM3, driver 550.127.05 (CUDA 12.4), …'."""
    names = sorted({g["name"] for g in facts["gpus"] if g.get("name")})
    what = f"{facts['count']} x {' / '.join(names)}" if names else f"{facts['count']} GPUs"
    cuda = f" (CUDA {facts['cuda_version']})" if facts.get("cuda_version") else ""
    links = ""
    if facts["nvlink_total"]:
        links = f", NVLink {facts['nvlink_active']}/{facts['nvlink_total']} active"
    return f"{what}, driver {facts['driver_version']}{cuda}{links}"
