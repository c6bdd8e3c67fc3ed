"""Shared e2e fixtures: one simulated cluster (``mnv-e2e``, 2 nodes, bond0) for the whole session.

Other e2e tests take the ``testbed`` fixture (a ``multinode_vllm.testbed.Testbed``: nodes, IPs,
``inventory`` = an inventory dir for ``ansible -i`` / ansible-runner, ``ssh_key``) and the
``run_ansible`` fixture (runs ansible / ansible-playbook from the repository root).
The test bed is taken down at the end of the session; its shared dir (model cache) is kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb

E2E_NAME = "mnv-e2e"
VENV_BIN = Path(PROJECT_DIR) / ".venv" / "bin"

# Every bed brought up from nothing is converged from scratch once (its first site.yml): the suite's
# cost is counted in them, so the run prints how many (issue 12: share converged beds).
BEDS_FROM_NOTHING: list[str] = []
_testbed_up = tb.up


def _counting_up(spec: tb.TestbedSpec, **kwargs: Any) -> tb.Testbed:
    existed = tb.status(spec.name)["exists"]
    bed = _testbed_up(spec, **kwargs)
    if not existed:
        BEDS_FROM_NOTHING.append(spec.name)
    return bed


tb.up = _counting_up  # the modules call tb.up through the package: each new bed is counted


# Wall time per test module (setup, calls and teardown, beds included): where the suite's time goes.
MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: Any) -> None:
    module = report.nodeid.split("::", 1)[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for module, secs in sorted(MODULE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"e2e time: {secs:7.1f} s  {module}")
    terminalreporter.write_line(
        f"e2e: {len(BEDS_FROM_NOTHING)} test beds brought up from nothing by this pytest process (each converged "
        f"from scratch once; the CLI tests bring up `mnv` in their own process): "
        f"{', '.join(BEDS_FROM_NOTHING) or 'none'}"
    )


@pytest.fixture(scope="session")
def testbed() -> Iterator[tb.Testbed]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/bootstrap (or testbed up --install-deps)")
    spec = tb.TestbedSpec(name=E2E_NAME, nodes=2, layout="bond0", local_inventory=False)
    bed = tb.up(spec)
    try:
        yield bed
    finally:
        if not os.environ.get("MNV_E2E_KEEP"):  # keep it for debugging: MNV_E2E_KEEP=1
            tb.down(E2E_NAME)


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(Path(PROJECT_DIR) / "ansible.cfg")
    env["ANSIBLE_DEPRECATION_WARNINGS"] = "False"
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def run_ansible(ansible_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_ansible("ansible-playbook", ARGS...)``: a controller tool from the repository root."""

    def _run(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / tool), *args],
            cwd=PROJECT_DIR,
            env=ansible_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return _run


@pytest.fixture(scope="session")
def node_venv() -> Path:
    """The node venv (real Ray, vLLM CPU build, nvidia-ml-py), built once and cached on the host."""
    from multinode_vllm.testbed.nodeenv import build_node_venv

    return build_node_venv()
