"""multinode.vllm.node_setup: a node's shared set-up in one call (the configuration directory, the
venv's Ray and vLLM, the Ray token), run through ``patch_module_args`` against real files and a fake
venv whose ``python`` prints the Ray version of each case."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.modules import node_setup

TOKEN = "s3cret-ray-token"


def venv(tmp_path: Path, ray_version: str = "2.52.1", bins: tuple[str, ...] = ("ray", "vllm", "python")) -> Path:
    root = tmp_path / "venv"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for b in bins:
        script = f"#!/bin/sh\necho {ray_version}\n" if b == "python" else "#!/bin/sh\n"
        (root / "bin" / b).write_text(script)
        (root / "bin" / b).chmod(0o755)
    return root


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str], check: bool = False) -> dict[str, Any]:
    with patch_module_args({**args, "_ansible_check_mode": check}), pytest.raises(SystemExit):
        node_setup.main()
    return json.loads(capsys.readouterr().out)


def args(tmp_path: Path, **more: Any) -> dict[str, Any]:
    conf = tmp_path / "etc"
    return {
        "config_dir": str(conf),
        "token": TOKEN,
        "token_path": str(conf / "ray-auth-token"),
        "token_min_ray_version": "2.52.0",
        **more,
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_call_creates_the_directory_and_the_token_and_the_second_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = args(tmp_path, venv=str(venv(tmp_path)))
    first = run_main(a, capsys)
    conf, token = tmp_path / "etc", tmp_path / "etc" / "ray-auth-token"
    assert first["changed"] is True and first["created"] == [str(conf), str(token)]
    assert first["venv_missing"] == [] and first["ray_version"] == "2.52.1" and first["token_written"] is True
    assert mode(conf) == 0o755 and mode(token) == 0o600 and token.read_text() == TOKEN
    assert TOKEN not in json.dumps(first)
    shm = first["shm"]  # the same figures as df --block-size=1 --output=size,used,avail /dev/shm
    assert shm["size"] > 0 and 0 <= shm["avail"] <= shm["size"] and 0 <= shm["used"] <= shm["size"]
    second = run_main(a, capsys)
    assert second["changed"] is False and second["created"] == []


def test_a_changed_token_or_a_loosened_mode_is_written_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = args(tmp_path, venv=str(venv(tmp_path)))
    run_main(a, capsys)
    token = tmp_path / "etc" / "ray-auth-token"
    token.chmod(0o644)
    fixed = run_main(a, capsys)
    assert fixed["created"] == [str(token)] and mode(token) == 0o600
    rotated = run_main({**a, "token": "another-token"}, capsys)
    assert rotated["changed"] is True and token.read_text() == "another-token" and mode(token) == 0o600
    assert [p.name for p in token.parent.iterdir()] == ["ray-auth-token"]  # no temporary file left


def test_a_ray_without_token_authentication_gets_no_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(args(tmp_path, venv=str(venv(tmp_path, ray_version="2.51.0"))), capsys)
    assert out["token_written"] is False and out["ray_version"] == "2.51.0"
    assert not (tmp_path / "etc" / "ray-auth-token").exists()
    assert out["created"] == [str(tmp_path / "etc")]


def test_what_the_venv_lacks_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(args(tmp_path, venv=str(venv(tmp_path, bins=("ray", "python")))), capsys)
    assert out["venv_missing"] == ["vllm"] and out["ray_version"] == "2.52.1"
    no_python = run_main(args(tmp_path, venv=str(tmp_path / "nowhere")), capsys)
    assert no_python["venv_missing"] == ["ray", "vllm", "python"] and no_python["ray_version"] == ""
    assert no_python["token_written"] is False


def test_without_a_venv_the_token_is_written_unchecked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the docker runtime: Ray lives in the image
    out = run_main(args(tmp_path), capsys)
    assert out["token_written"] is True and out["venv_missing"] == [] and out["ray_version"] == ""
    assert (tmp_path / "etc" / "ray-auth-token").read_text() == TOKEN


def test_check_mode_changes_nothing_and_says_what_it_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(args(tmp_path, venv=str(venv(tmp_path))), capsys, check=True)
    assert out["changed"] is True and len(out["created"]) == 2 and out["token_written"] is True
    assert not (tmp_path / "etc").exists()


def test_only_the_directory_without_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({"config_dir": str(tmp_path / "etc")}, capsys)
    assert out["created"] == [str(tmp_path / "etc")] and out["token_written"] is False
