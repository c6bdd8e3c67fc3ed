"""gpu_facts: NVML reads, checks and messages, through the real pynvml and the fake libnvidia-ml.

The fake is only the hardware boundary (``tests/fixtures/fake_nvml/fake_nvml.c``, compiled by
``multinode_vllm.testbed.fake_nvml``). In-process tests preload it (``RTLD_GLOBAL``) so pynvml's
``CDLL("libnvidia-ml.so.1")`` gets it; the "no library at all" case and the ``ansible`` runs use
a fresh process whose LD_LIBRARY_PATH decides what is found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
from ansible.module_utils.testing import patch_module_args
from multinode_vllm.module_utils import _nvml

from multinode_vllm import PROJECT_DIR
from multinode_vllm.testbed import fake_nvml

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.modules import gpu_facts

ANSIBLE = Path(sys.executable).parent / "ansible"
GIB80 = 80 * 2**30


@pytest.fixture
def node(fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., dict]]:
    """Describe this process's GPUs: make_config kwargs, or cfg=dict; returns the config."""

    def configure(cfg: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        cfg = cfg if cfg is not None else fake_nvml.make_config(**kwargs)
        path = fake_nvml.write_config(tmp_path / "nvml.json", cfg)
        monkeypatch.setenv("FAKE_NVML_CONFIG", str(path))
        return cfg

    yield configure
    while True:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            break


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        gpu_facts.main()
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


# --- read_gpus + check_gpus through pynvml ---------------------------------------------------


def test_eight_healthy_gpus(node: Callable[..., dict]) -> None:
    cfg = node(seed="node1")
    facts = _nvml.read_gpus(pynvml)
    assert facts["count"] == 8
    assert facts["driver_version"] == "550.127.05"
    assert facts["cuda_version"] == "12.4" and facts["cuda_driver_version"] == 12040
    assert facts["nvlink_total"] == 144 and facts["nvlink_active"] == 144
    assert facts["memory_total_min"] == GIB80
    assert [g["uuid"] for g in facts["gpus"]] == [g["uuid"] for g in cfg["gpus"]]
    assert [g["index"] for g in facts["gpus"]] == list(range(8))
    gpu = facts["gpus"][7]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert (gpu["memory_total"], gpu["memory_used"]) == (GIB80, 0)
    assert gpu["pci_bus_id"] == "00000000:DB:00.0"
    assert gpu["nvlinks"] == {"total": 18, "active": 18, "inactive": []}
    assert gpu["fabric_state"] == "completed" and gpu["error"] is None
    assert _nvml.check_gpus(facts, 8, True, "550.127.05") == []
    assert _nvml.summary_line(facts) == (
        "8 x NVIDIA H100 80GB HBM3, driver 550.127.05 (CUDA 12.4), NVLink 144/144 active"
    )
    # read_gpus shut NVML down again
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()


def test_one_nvlink_down_names_gpu_uuid_and_link(node: Callable[..., dict]) -> None:
    cfg = node(down_links={3: [5]})
    facts = _nvml.read_gpus(pynvml)
    assert facts["nvlink_active"] == 143
    assert facts["gpus"][3]["nvlinks"] == {"total": 18, "active": 17, "inactive": [5]}
    errors = _nvml.check_gpus(facts, 8, require_nvlink=True)
    uuid = cfg["gpus"][3]["uuid"]
    assert errors == [
        f"GPU 3 ({uuid}): NVLink 5 is inactive; 17 of 18 links active. Check the NVLink/NVSwitch "
        "fabric and nvidia-fabricmanager (prepare phase)."
    ]
    # without require_nvlink the facts still tell, but nothing fails
    assert _nvml.check_gpus(facts, 8, require_nvlink=False) == []


def test_several_links_down_on_two_gpus(node: Callable[..., dict]) -> None:
    node(down_links={0: [2, 7], 6: [17]})
    errors = _nvml.check_gpus(_nvml.read_gpus(pynvml), require_nvlink=True)
    assert len(errors) == 2
    assert errors[0].startswith("GPU 0 (GPU-") and "NVLinks 2, 7 are inactive; 16 of 18 links active" in errors[0]
    assert errors[1].startswith("GPU 6 (GPU-") and "NVLink 17 is inactive; 17 of 18" in errors[1]


def test_gpu_count_mismatch(node: Callable[..., dict]) -> None:
    node(gpu_count=7)
    facts = _nvml.read_gpus(pynvml)
    errors = _nvml.check_gpus(facts, expected_count=8)
    assert len(errors) == 1
    assert errors[0].startswith("NVML sees 7 GPUs, expected 8.")
    assert "Xid 79" in errors[0]
    assert _nvml.check_gpus(facts, expected_count=7) == []


def test_driver_version_mismatch(node: Callable[..., dict]) -> None:
    node(driver_version="535.183.01", cuda_driver_version=12020)
    facts = _nvml.read_gpus(pynvml)
    assert facts["cuda_version"] == "12.2"
    errors = _nvml.check_gpus(facts, expected_driver="550.127.05")
    assert len(errors) == 1
    assert errors[0].startswith("NVIDIA driver 535.183.01 is installed, expected 550.127.05.")
    assert "ansible-playbook site.yml --tags prepare" in errors[0]
    assert _nvml.check_gpus(facts, expected_driver="535") == []  # the branch
    assert _nvml.check_gpus(facts, expected_driver="535.18") != []  # not a dot boundary


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "upgraded without a reboot): reboot the node"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "become: true"),
        (
            pynvml.NVML_ERROR_UNKNOWN,
            "NVML initialisation failed: Unknown Error (NVMLError_Unknown, code 999)",
        ),
    ],
)
def test_init_error_points_at_the_prepare_phase(node: Callable[..., dict], code: int, words: str) -> None:
    node(fail={"nvmlInit": code})
    with pytest.raises(_nvml.NvmlUnavailable) as err:
        _nvml.read_gpus(pynvml)
    msg = str(err.value)
    assert msg.startswith("Cannot read the GPUs through NVML: ")
    assert words in msg
    assert "`ansible-playbook site.yml --tags prepare` (role nvidia_driver)" in msg


def test_lost_gpu_is_named_and_the_others_are_read(node: Callable[..., dict]) -> None:
    cfg = fake_nvml.make_config()
    cfg["gpus"][4]["fail"] = {"nvmlDeviceGetNvLinkState": pynvml.NVML_ERROR_GPU_IS_LOST}
    cfg["gpus"][6]["fail"] = {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_GPU_IS_LOST}
    node(cfg)
    facts = _nvml.read_gpus(pynvml)
    assert facts["count"] == 8
    assert facts["gpus"][5]["error"] is None and facts["gpus"][5]["nvlinks"]["active"] == 18
    assert facts["gpus"][6]["uuid"] is None
    errors = _nvml.check_gpus(facts, 8, True)
    assert errors == [
        f"GPU 4 ({cfg['gpus'][4]['uuid']}): NVML cannot read its NVLink states: GPU is lost "
        "(NVMLError_GpuIsLost, code 15). Check `nvidia-smi` and `dmesg` (Xid errors) on the node; a lost "
        "GPU needs a reset or a reboot.",
        "GPU 6: NVML cannot open it: GPU is lost (NVMLError_GpuIsLost, code 15). Check `nvidia-smi` and "
        "`dmesg` (Xid errors) on the node; a lost GPU needs a reset or a reboot.",
    ]


def test_fabric_not_started_fails_even_without_require_nvlink(node: Callable[..., dict]) -> None:
    node(gpu_count=2, fabric_state="not_started")
    facts = _nvml.read_gpus(pynvml)
    assert [g["fabric_state"] for g in facts["gpus"]] == ["not_started", "not_started"]
    errors = _nvml.check_gpus(facts)
    assert len(errors) == 2
    assert "GPU fabric registration is not started" in errors[0]
    assert "nvidia-fabricmanager" in errors[0]


def test_fabric_completed_with_an_error(node: Callable[..., dict]) -> None:
    cfg = fake_nvml.make_config(gpu_count=1)
    cfg["gpus"][0]["fabric_status"] = pynvml.NVML_ERROR_NOT_READY
    node(cfg)
    facts = _nvml.read_gpus(pynvml)
    assert facts["gpus"][0]["fabric_error"] is not None
    (error,) = _nvml.check_gpus(facts)
    assert "GPU fabric registration failed" in error and "code 27" in error


def test_pcie_card_without_nvlink_or_fabric(node: Callable[..., dict]) -> None:
    node(gpu_count=1, name="NVIDIA H100 PCIe", nvlinks_per_gpu=0, fabric_state=None)
    facts = _nvml.read_gpus(pynvml)
    gpu = facts["gpus"][0]
    assert gpu["nvlinks"] == {"total": 0, "active": 0, "inactive": []}
    assert gpu["fabric_state"] == "not_supported"
    assert _nvml.check_gpus(facts, 1) == []
    (error,) = _nvml.check_gpus(facts, 1, require_nvlink=True)
    assert "GPU 0 (GPU-" in error and "no NVLink" in error
    assert _nvml.summary_line(facts) == "1 x NVIDIA H100 PCIe, driver 550.127.05 (CUDA 12.4)"


def test_unsupported_links_are_skipped_not_counted(node: Callable[..., dict]) -> None:
    cfg = fake_nvml.make_config(gpu_count=1, nvlinks_per_gpu=4)
    cfg["gpus"][0]["nvlinks"] = [True, None, False, True]
    node(cfg)
    facts = _nvml.read_gpus(pynvml)
    assert facts["gpus"][0]["nvlinks"] == {"total": 3, "active": 2, "inactive": [2]}
    (error,) = _nvml.check_gpus(facts, require_nvlink=True)
    assert "NVLink 2 is inactive; 2 of 3 links active" in error


def test_zero_gpus(node: Callable[..., dict]) -> None:
    node(gpu_count=0)
    facts = _nvml.read_gpus(pynvml)
    assert (facts["count"], facts["memory_total_min"], facts["nvlink_total"]) == (0, 0, 0)
    assert _nvml.check_gpus(facts, expected_count=8)[0].startswith("NVML sees 0 GPUs, expected 8.")


@pytest.mark.parametrize(("raw", "text"), [(12040, "12.4"), (12080, "12.8"), (11080, "11.8"), (0, None)])
def test_cuda_version_text(raw: int, text: str | None) -> None:
    assert _nvml.cuda_version_text(raw) == text


# --- main() ----------------------------------------------------------------------------------


def test_main_healthy_returns_facts(node: Callable[..., dict], capsys: pytest.CaptureFixture[str]) -> None:
    node()
    res = run_main({"expected_gpu_count": 8, "require_nvlink": True, "expected_driver_version": "550.127.05"}, capsys)
    assert res.get("failed") is not True, res
    assert res["changed"] is False and res["errors"] == []
    facts = res["ansible_facts"]["multinode_gpu"]
    assert (facts["count"], facts["nvlink_active"], facts["cuda_version"]) == (8, 144, "12.4")
    assert res["msg"].startswith("8 x NVIDIA H100 80GB HBM3")


def test_main_one_link_down_fails(node: Callable[..., dict], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = node(down_links={3: [5]})
    res = run_main({"expected_gpu_count": 8, "require_nvlink": True, "_ansible_check_mode": True}, capsys)
    assert res["failed"] is True
    assert res["msg"].startswith(f"GPU 3 ({cfg['gpus'][3]['uuid']}): NVLink 5 is inactive; 17 of 18 links active.")
    assert res["ansible_facts"]["multinode_gpu"]["gpus"][3]["nvlinks"]["inactive"] == [5]


def test_main_count_and_driver_mismatch_both_reported(
    node: Callable[..., dict], capsys: pytest.CaptureFixture[str]
) -> None:
    node(gpu_count=4, driver_version="535.183.01")
    res = run_main({"expected_gpu_count": 8, "expected_driver_version": "550.127.05"}, capsys)
    assert res["failed"] is True
    assert len(res["errors"]) == 2
    assert res["msg"] == " | ".join(res["errors"])
    assert "NVML sees 4 GPUs, expected 8" in res["msg"] and "driver 535.183.01 is installed" in res["msg"]


def test_main_no_driver_is_a_clear_failure(node: Callable[..., dict], capsys: pytest.CaptureFixture[str]) -> None:
    node(fail={"nvmlInit": pynvml.NVML_ERROR_DRIVER_NOT_LOADED})
    res = run_main({"expected_gpu_count": 8}, capsys)
    assert res["failed"] is True
    assert "Driver Not Loaded" in res["msg"] and "--tags prepare" in res["msg"]
    assert "exception" not in res and "Traceback" not in res["msg"]
    assert "ansible_facts" not in res


def test_main_without_pynvml_asks_for_nvidia_ml_py(
    node: Callable[..., dict], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node()
    monkeypatch.setattr(gpu_facts, "pynvml", None)
    monkeypatch.setattr(gpu_facts, "PYNVML_IMPORT_ERROR", "ImportError: No module named 'pynvml'")
    res = run_main({}, capsys)
    assert res["failed"] is True
    assert "nvidia-ml-py" in res["msg"]


def test_main_without_pynvml_and_missing_ok_says_so_without_failing(
    node: Callable[..., dict], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the preflight role tries gpu_facts first and installs the bindings only on this answer
    node()
    monkeypatch.setattr(gpu_facts, "pynvml", None)
    monkeypatch.setattr(
        gpu_facts, "PYNVML_IMPORT_ERROR", "Traceback ...\nModuleNotFoundError: No module named 'pynvml'\n"
    )
    res = run_main({"missing_ok": True}, capsys)
    assert res.get("failed") is not True, res
    assert res["pynvml_missing"] is True
    assert res["import_error"] == "ModuleNotFoundError: No module named 'pynvml'"
    assert "ansible_facts" not in res


def test_missing_ok_changes_nothing_when_pynvml_is_there(
    node: Callable[..., dict], capsys: pytest.CaptureFixture[str]
) -> None:
    node(gpu_count=4)
    res = run_main({"missing_ok": True, "expected_gpu_count": 8}, capsys)
    assert res["failed"] is True and "NVML sees 4 GPUs, expected 8" in res["msg"]
    assert "pynvml_missing" not in res


# --- fresh processes: no library at all, and ansible itself ----------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "FAKE_NVML_CONFIG", "LD_PRELOAD")}
    env.update(extra)
    return env


def test_no_library_at_all_says_no_driver_is_installed(tmp_path: Path) -> None:
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this host has a real libnvidia-ml")
    code = (
        "import pynvml\n"
        "from multinode_vllm.module_utils import _nvml\n"
        "try:\n"
        "    _nvml.read_gpus(pynvml)\n"
        "except _nvml.NvmlUnavailable as exc:\n"
        "    print(type(exc.__cause__).__name__)\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    cause, msg = proc.stdout.splitlines()
    assert cause == "NVMLError_LibraryNotFound"
    assert msg.startswith(
        "Cannot read the GPUs through NVML: the NVML library libnvidia-ml.so.1 is not found: "
        "no NVIDIA driver is installed on this host."
    )
    assert "`ansible-playbook site.yml --tags prepare` (role nvidia_driver)" in msg


def ansible_gpu_facts(args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``ansible localhost -m multinode.vllm.gpu_facts -a ARGS`` with the json callback."""
    env = {**env, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"}
    proc = subprocess.run(
        [str(ANSIBLE), "localhost", "-m", "multinode.vllm.gpu_facts", "-a", args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    out = json.loads(proc.stdout)
    return proc.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_ansible_adhoc_fails_on_one_link_down(fake_lib: Path, tmp_path: Path) -> None:
    cfg = fake_nvml.make_config(down_links={3: [5]}, seed="adhoc")
    path = fake_nvml.write_config(tmp_path / "config.json", cfg)
    env = _env(LD_LIBRARY_PATH=str(fake_lib.parent), FAKE_NVML_CONFIG=str(path))
    rc, res = ansible_gpu_facts("expected_gpu_count=8 require_nvlink=true", env)
    assert rc == 2
    assert res["failed"] is True
    assert res["msg"] == (
        f"GPU 3 ({cfg['gpus'][3]['uuid']}): NVLink 5 is inactive; 17 of 18 links active. "
        "Check the NVLink/NVSwitch fabric and nvidia-fabricmanager (prepare phase)."
    )
    assert res["ansible_facts"]["multinode_gpu"]["nvlink_active"] == 143

    fake_nvml.write_config(path, fake_nvml.make_config(seed="adhoc"))
    rc, res = ansible_gpu_facts("expected_gpu_count=8 require_nvlink=true", env)
    assert rc == 0, res
    assert res["ansible_facts"]["multinode_gpu"]["nvlink_active"] == 144


def test_ansible_adhoc_without_a_driver(tmp_path: Path) -> None:
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this host has a real libnvidia-ml")
    rc, res = ansible_gpu_facts("expected_gpu_count=8", _env())
    assert rc == 2
    assert "libnvidia-ml.so.1 is not found" in res["msg"]
    # a clean fail_json: no module crash, no Python traceback (2.19 adds a placeholder exception)
    assert "module_stderr" not in res
    assert "Traceback" not in str(res.get("exception", ""))
