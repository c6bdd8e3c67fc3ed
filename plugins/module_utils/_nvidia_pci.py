# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPUs and NVSwitches from the PCI bus in sysfs, and NVSwitch device nodes in /dev.

Pure functions over a root path: they work before any driver is installed (the PCI bus needs no
driver), which is when the prepare phase must decide whether nvidia-fabricmanager is needed.
"""

from __future__ import annotations

import os
import re
from typing import Any

NVIDIA_VENDOR = "0x10de"
# PCI class (base, sub): 0x03 display controller (0x0300 VGA, 0x0302 3D controller: datacenter
# GPUs); NVSwitches show up as "Bridge [0680]" (other bridge), e.g. 10de:22a3 on HGX H100/H200.
GPU_CLASS_PREFIX = "0x03"
NVSWITCH_CLASS_PREFIX = "0x0680"
NVSWITCH_DEV_RE = re.compile(r"^nvidia-nvswitch[0-9]+$")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip().lower()
    except OSError:
        return ""


def read_pci(sysfs_root: str) -> list[dict[str, str]]:
    """Every device under <root>/bus/pci/devices: address, vendor, device and class (lowercase hex)."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    if not os.path.isdir(base):
        return []
    devices = []
    for address in sorted(os.listdir(base)):
        path = os.path.join(base, address)
        devices.append(
            {
                "address": address,
                "vendor": _read(os.path.join(path, "vendor")),
                "device": _read(os.path.join(path, "device")),
                "class": _read(os.path.join(path, "class")),
            }
        )
    return devices


def nvswitch_device_nodes(dev_dir: str) -> list[str]:
    """/dev/nvidia-nvswitch0.. (the driver creates them once loaded; not nvidia-nvswitchctl)."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    return sorted(os.path.join(dev_dir, n) for n in names if NVSWITCH_DEV_RE.match(n))


def summarize(devices: list[dict[str, str]], dev_nodes: list[str]) -> dict[str, Any]:
    """GPUs and NVSwitches; ``nvswitch`` is true when either the PCI bus or /dev shows one."""
    nvidia = [d for d in devices if d.get("vendor") == NVIDIA_VENDOR]
    gpus = [{"address": d["address"], "device": d["device"]} for d in nvidia if d["class"].startswith(GPU_CLASS_PREFIX)]
    switches = [
        {"address": d["address"], "device": d["device"]} for d in nvidia if d["class"].startswith(NVSWITCH_CLASS_PREFIX)
    ]
    return {
        "gpu_count": len(gpus),
        "gpus": gpus,
        "nvswitch_count": len(switches),
        "nvswitches": switches,
        "nvswitch_device_nodes": list(dev_nodes),
        "nvswitch": bool(switches or dev_nodes),
    }


def read_facts(sysfs_root: str, dev_dir: str) -> dict[str, Any]:
    return summarize(read_pci(sysfs_root), nvswitch_device_nodes(dev_dir))
