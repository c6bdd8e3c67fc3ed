"""nvidia_pci_facts: NVIDIA GPUs and NVSwitches from a sysfs PCI tree and /dev, and main() for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.multinode.vllm.plugins.module_utils._nvidia_pci import (
    nvswitch_device_nodes,
    read_facts,
    read_pci,
    summarize,
)
from ansible_collections.multinode.vllm.plugins.modules import nvidia_pci_facts

from multinode_vllm.testbed import fake_pci


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        nvidia_pci_facts.main()
    return json.loads(capsys.readouterr().out)


def test_hgx_node_has_eight_gpus_and_four_nvswitches(tmp_path: Path) -> None:
    fake_pci.write_tree(tmp_path, gpus=8, nvswitches=4)
    facts = read_facts(str(tmp_path), str(tmp_path / "dev"))
    assert facts["gpu_count"] == 8
    assert facts["nvswitch_count"] == 4
    assert facts["nvswitch"] is True
    assert {g["device"] for g in facts["gpus"]} == {"0x2330"}  # H100 SXM5
    assert [s["address"] for s in facts["nvswitches"]] == [
        "0000:05:00.0",
        "0000:06:00.0",
        "0000:07:00.0",
        "0000:08:00.0",
    ]
    # the GPUs sit where the fake NVML says they are
    assert facts["gpus"][0]["address"] == "0000:18:00.0"


def test_pcie_node_has_gpus_and_no_nvswitch(tmp_path: Path) -> None:
    fake_pci.write_tree(tmp_path, gpus=8, nvswitches=0)
    facts = read_facts(str(tmp_path), str(tmp_path / "dev"))
    assert (facts["gpu_count"], facts["nvswitch_count"], facts["nvswitch"]) == (8, 0, False)
    assert {g["device"] for g in facts["gpus"]} == {"0x2331"}  # H100 PCIe


def test_other_vendors_and_classes_do_not_count() -> None:
    devices = [
        {"address": "0000:01:00.0", "vendor": "0x15b3", "device": "0x1021", "class": "0x020700"},  # ConnectX
        {"address": "0000:02:00.0", "vendor": "0x15b3", "device": "0x1af1", "class": "0x068000"},  # not NVIDIA
        {"address": "0000:18:00.1", "vendor": "0x10de", "device": "0x22ba", "class": "0x040300"},  # GPU audio
        {"address": "0000:18:00.0", "vendor": "0x10de", "device": "0x2335", "class": "0x030200"},  # H200
        {"address": "0000:05:00.0", "vendor": "0x10de", "device": "0x22a3", "class": "0x068000"},  # NVSwitch
    ]
    facts = summarize(devices, [])
    assert [g["address"] for g in facts["gpus"]] == ["0000:18:00.0"]
    assert [s["device"] for s in facts["nvswitches"]] == ["0x22a3"]


def test_device_nodes_alone_mean_nvswitch(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia-nvswitchctl", "nvidia-nvswitch0", "nvidia-nvswitch1", "nvidiactl"):
        (dev / name).touch()
    assert nvswitch_device_nodes(str(dev)) == [str(dev / "nvidia-nvswitch0"), str(dev / "nvidia-nvswitch1")]
    facts = read_facts(str(tmp_path / "no-sysfs"), str(dev))
    assert facts["nvswitch"] is True and facts["nvswitch_count"] == 0 and facts["gpu_count"] == 0


def test_missing_trees_read_as_nothing(tmp_path: Path) -> None:
    assert read_pci(str(tmp_path / "absent")) == []
    assert nvswitch_device_nodes(str(tmp_path / "absent")) == []
    assert read_facts(str(tmp_path / "absent"), str(tmp_path / "absent"))["nvswitch"] is False


def test_write_tree_refuses_impossible_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nvswitches 0\.\.4"):
        fake_pci.write_tree(tmp_path, gpus=8, nvswitches=5)


def test_main_returns_the_facts_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_pci.write_tree(tmp_path, gpus=4, nvswitches=2)
    result = run_module(
        {"sysfs_root": str(tmp_path), "dev_dir": str(tmp_path / "dev"), "_ansible_check_mode": True}, capsys
    )
    assert result["changed"] is False
    facts = result["ansible_facts"]["multinode_nvidia_pci"]
    assert (facts["gpu_count"], facts["nvswitch_count"], facts["nvswitch"]) == (4, 2, True)


def test_fake_pci_cli_writes_a_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fake_pci.main([str(tmp_path), "--gpus", "2", "--nvswitches", "1"]) == 0
    assert read_facts(str(tmp_path), str(tmp_path))["nvswitch_count"] == 1
    assert capsys.readouterr().out.strip().endswith("bus/pci/devices")
