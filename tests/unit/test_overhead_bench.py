"""benchmarks/overhead.py: the by-hand commands are the deployed units' own, typed over ssh."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

from multinode_vllm import PROJECT_DIR

spec = importlib.util.spec_from_file_location("overhead", Path(PROJECT_DIR) / "benchmarks" / "overhead.py")
assert spec and spec.loader
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)

RAY_UNIT = """\
# /etc/systemd/system/ray-head.service
[Service]
EnvironmentFile=/etc/multinode-vllm/ray-head.env
ExecStart="/v/bin/ray" "start" "--head" "--block" "--node-ip-address=10.200.1.11" "--port=6379"
KillMode=mixed
"""
VLLM_UNIT = (
    "[Service]\n"
    "EnvironmentFile=-/etc/multinode-vllm/vllm.env\n"
    'ExecStart="/v/bin/vllm" "serve" "/m" "--served-model-name" "tiny" '
    '"--compilation-config" "{\\"mode\\":2}" "--x" "100%%" "a$$b"\n'
)


def test_exec_start_undoes_systemd_quoting() -> None:
    argv, env = overhead.exec_start(VLLM_UNIT)
    assert env == "/etc/multinode-vllm/vllm.env"
    assert argv == ["/v/bin/vllm", "serve", "/m", "--served-model-name", "tiny", "--compilation-config", '{"mode":2}',
                    "--x", "100%", "a$b"]  # fmt: skip


def test_ray_by_hand_drops_block_and_sources_the_env_file() -> None:
    cmd = overhead.by_hand_command(*overhead.exec_start(RAY_UNIT), "/tmp/r.log")
    assert cmd.startswith("set -a; . /etc/multinode-vllm/ray-head.env; set +a; ")
    words = shlex.split(cmd.split("set +a; ", 1)[1])
    assert words[:3] == ["/v/bin/ray", "start", "--head"]
    assert "--block" not in words
    assert "nohup" not in words


def test_vllm_by_hand_runs_in_the_background_and_prints_its_pid() -> None:
    argv, env = overhead.exec_start(VLLM_UNIT)
    cmd = overhead.by_hand_command(argv, env, "/tmp/v.log")
    assert "nohup /v/bin/vllm serve /m" in cmd
    assert cmd.endswith("& echo $!")
    assert shlex.quote('{"mode":2}') in cmd


def test_env_value_reads_the_api_key() -> None:
    assert overhead.env_value("HF_HOME=/h\nVLLM_API_KEY='k 1'\n", "VLLM_API_KEY") == "k 1"
    assert overhead.env_value("HF_HOME=/h\n", "VLLM_API_KEY") is None
