"""The prepare roles' input checks and the reboot handler's refusal, through the real ansible-playbook.

No node is contacted: the facts are set on the controller (set_fact with cacheable: true makes them
ansible_facts) and every case stops at a check that runs on the controller (argument specs,
asserts, fail), before any module reaches a host (192.0.2.0/24 is TEST-NET-1, never dialled).
The handler cases run its tasks over a local connection: they are fail/debug/set_fact actions,
which never touch this machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import ansible_playbook

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
DEBIAN12 = {
    "ansible_distribution": "Debian",
    "ansible_distribution_version": "12.8",
    "ansible_distribution_major_version": "12",
    "ansible_distribution_release": "bookworm",
    "ansible_os_family": "Debian",
    "ansible_architecture": "x86_64",
    "ansible_kernel": "6.1.0-28-amd64",
}
ROCKY9 = {
    **DEBIAN12,
    "ansible_distribution": "Rocky",
    "ansible_distribution_version": "9.4",
    "ansible_distribution_major_version": "9",
    "ansible_distribution_release": "Blue Onyx",
    "ansible_os_family": "RedHat",
    "ansible_kernel": "5.14.0-427.el9.x86_64",
}
UBUNTU2004 = {
    **DEBIAN12,
    "ansible_distribution": "Ubuntu",
    "ansible_distribution_version": "20.04",
    "ansible_distribution_major_version": "20",
    "ansible_distribution_release": "focal",
}


def play(tmp_path: Path, role: str, facts: dict[str, Any], *extra: str) -> tuple[int, str]:
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"vllm_cluster": {"hosts": {"gpu1": {"ansible_host": "192.0.2.21"}}}}}})
    )
    tasks = [
        {"name": "Set the node's facts", "ansible.builtin.set_fact": {**facts, "cacheable": True}},
        {"name": "Run the role", "ansible.builtin.include_role": {"name": f"multinode.vllm.{role}"}},
    ]
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump([{"name": "One role", "hosts": "vllm_cluster", "gather_facts": False, "tasks": tasks}])
    )
    return run(tmp_path, "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"), *extra)


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = ansible_playbook(*args, timeout=120, ANSIBLE_NOCOLOR="1", ANSIBLE_TIMEOUT="3")
    # the yaml callback folds long messages: compare with whitespace collapsed
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.parametrize("role", ["nvidia_driver", "docker", "nvidia_container_toolkit"])
@pytest.mark.parametrize(
    ("facts", "shown"), [(ROCKY9, "Rocky 9"), (UBUNTU2004, "Ubuntu 20.04")], ids=["rocky9", "ubuntu2004"]
)
def test_an_unsupported_os_stops_before_anything_changes(
    tmp_path: Path, role: str, facts: dict[str, Any], shown: str
) -> None:
    rc, out = play(tmp_path, role, facts)
    assert rc == 2, out[-3000:]
    assert "Stop if the operating system is not supported" in out
    assert f"gpu1 runs {shown}" in out, out[-3000:]
    assert "Ubuntu 22.04" in out and "Ubuntu 24.04" in out and "Debian 12" in out
    assert "multinode_prepare: false" in out  # the fix
    assert "unreachable=0" in out  # no host was dialled


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            {"nvidia_driver_branch": "55"}, ["nvidia_driver_branch=55", "a branch is three digits"], id="branch"
        ),
        pytest.param(
            {"nvidia_driver_branch": "550", "nvidia_driver_version": "580.95.05"},
            ["nvidia_driver_version=580.95.05", "an upstream version of that branch"],
            id="version-of-another-branch",
        ),
        pytest.param(
            {"nvidia_driver_fabricmanager": "maybe"},
            ["nvidia_driver_fabricmanager", "auto, true, false", "maybe"],
            id="fabricmanager-choice",
        ),
        pytest.param(
            {"nvidia_driver_reboot_timeout": "soon"}, ["nvidia_driver_reboot_timeout", "int"], id="timeout-type"
        ),
    ],
)
def test_bad_driver_input_is_named(tmp_path: Path, extra: dict[str, Any], expected: list[str]) -> None:
    rc, out = play(tmp_path, "nvidia_driver", DEBIAN12, "-e", json.dumps(extra))
    assert rc == 2, out[-3000:]
    for text in expected:
        assert text in out, f"{text!r} not in {out[-3000:]}"
    assert "unreachable=0" in out


def test_fabricmanager_accepts_yaml_booleans(tmp_path: Path) -> None:
    # true as YAML (a bool) passes the argument spec; the branch check behind it then stops the run
    rc, out = play(
        tmp_path,
        "nvidia_driver",
        DEBIAN12,
        "-e",
        json.dumps({"nvidia_driver_fabricmanager": True, "nvidia_driver_branch": "5x0"}),
    )
    assert rc == 2
    assert "nvidia_driver_branch=5x0" in out, out[-3000:]


@pytest.mark.parametrize(
    ("role", "extra", "expected"),
    [
        ("docker", {"docker_source": "snap"}, ["docker_source", "docker-ce, distro", "snap"]),
        ("docker", {"docker_daemon_config": ["log-driver", "json-file"]}, ["docker_daemon_config", "dict"]),
        (
            "nvidia_container_toolkit",
            {"nvidia_container_toolkit_gpu_check": "sometimes"},
            ["nvidia_container_toolkit_gpu_check", "sometimes"],
        ),
    ],
)
def test_bad_docker_and_toolkit_input_is_named(
    tmp_path: Path, role: str, extra: dict[str, Any], expected: list[str]
) -> None:
    rc, out = play(tmp_path, role, DEBIAN12, "-e", json.dumps(extra))
    assert rc == 2, out[-3000:]
    for text in expected:
        assert text in out, f"{text!r} not in {out[-3000:]}"


def handler(tmp_path: Path, *extra: str) -> tuple[int, str]:
    (tmp_path / "handler.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The reboot handler over a local connection",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run the reboot handler of nvidia_driver",
                            "ansible.builtin.include_role": {
                                "name": "multinode.vllm.nvidia_driver",
                                "tasks_from": "reboot.yml",
                            },
                        }
                    ],
                }
            ]
        )
    )
    return run(tmp_path, "-i", "localhost,", str(tmp_path / "handler.yml"), *extra)


def test_the_reboot_is_refused_over_a_local_connection(tmp_path: Path) -> None:
    rc, out = handler(tmp_path)
    assert rc == 2, out[-3000:]
    assert "Refusing to reboot localhost: it is reached over a local connection" in out
    assert "nvidia_driver_reboot=false" in out  # the way out is named
    assert "Reboot the node and wait until it is back" not in out  # the reboot task never ran


def test_the_reboot_switched_off_is_skipped_with_a_message(tmp_path: Path) -> None:
    rc, out = handler(tmp_path, "-e", "nvidia_driver_reboot=false")
    assert rc == 0, out[-3000:]
    assert "localhost needs a reboot for the NVIDIA driver, skipped (nvidia_driver_reboot=false)" in out
    assert "failed=0" in out


def test_check_mode_over_a_local_connection_neither_fails_nor_reboots(tmp_path: Path) -> None:
    rc, out = handler(tmp_path, "--check")
    assert rc == 0, out[-3000:]
    assert "Refusing" not in out
    assert (
        "TASK [multinode.vllm.nvidia_driver : Reboot the node and wait until it is back] *** skipping: [localhost]"
        in out
    )
