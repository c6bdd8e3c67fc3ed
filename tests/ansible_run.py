"""Run the controller's ansible-playbook from the repository root, as the tests need it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)


def ansible_playbook(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook ARGS` with the repository's ansible.cfg (and extra environment), not checked."""
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-playbook"), *args],
        cwd=ROOT,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
