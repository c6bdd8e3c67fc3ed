"""A fake /sys/bus/pci/devices tree with NVIDIA GPUs and NVSwitches: a test fixture (stdlib only).

HGX H100/H200 baseboards carry 8 SXM GPUs and 4 NVSwitches (10de:22a3, class 0x068000); a PCIe
node has GPUs and no NVSwitch. nvidia_pci_facts reads this tree through its sysfs_root option.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from multinode_vllm.testbed.fake_nvml import pci_bus_id

H100_SXM = "0x2330"
H100_PCIE = "0x2331"
NVSWITCH_GEN3 = "0x22a3"
GPU_CLASS = "0x030200"  # 3D controller
NVSWITCH_CLASS = "0x068000"  # bridge, other
NVSWITCH_BUSES = (0x05, 0x06, 0x07, 0x08)


def _device(base: Path, address: str, vendor: str, device: str, klass: str) -> None:
    d = base / address
    d.mkdir(parents=True, exist_ok=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    (d / "class").write_text(klass + "\n")


def write_tree(root: Path, gpus: int = 8, nvswitches: int = 0, gpu_device: str | None = None) -> Path:
    """GPUs at the fake NVML's PCI addresses (so both agree), NVSwitches on buses 05..08, a NIC."""
    if not 0 <= gpus <= 64 or not 0 <= nvswitches <= len(NVSWITCH_BUSES):
        raise ValueError(f"gpus must be 0..64 and nvswitches 0..{len(NVSWITCH_BUSES)}, got {gpus}, {nvswitches}")
    base = Path(root) / "bus" / "pci" / "devices"
    base.mkdir(parents=True, exist_ok=True)
    device = gpu_device or (H100_SXM if nvswitches else H100_PCIE)
    for i in range(gpus):
        address = pci_bus_id(i)[4:].lower()  # NVML "00000000:18:00.0" -> sysfs "0000:18:00.0"
        _device(base, address, "0x10de", device, GPU_CLASS)
    for bus in NVSWITCH_BUSES[:nvswitches]:
        _device(base, f"0000:{bus:02x}:00.0", "0x10de", NVSWITCH_GEN3, NVSWITCH_CLASS)
    _device(base, "0000:01:00.0", "0x15b3", "0x1021", "0x020700")  # a ConnectX-7 HCA: not NVIDIA's 10de
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multinode_vllm.testbed.fake_pci", description="Write a fake sysfs PCI tree under ROOT."
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--nvswitches", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        base = write_tree(args.root, gpus=args.gpus, nvswitches=args.nvswitches)
    except ValueError as exc:
        parser.error(str(exc))
    print(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
