"""`site.yml --tags validate` checks the real-server inventories without contacting a node.

Every role's argument check is tagged `always`; none may depend on node facts, or a run limited
to one phase fails in a phase it did not ask for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_run import ansible_playbook

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)


@pytest.mark.parametrize("inventory", ["baremetal", "droplet", "slurm"])
def test_tags_validate_passes_without_nodes(inventory: str) -> None:
    proc = ansible_playbook(
        *("-i", str(ROOT / "inventories" / inventory), "site.yml", "--tags", "validate"),
        *("-e", "vault_multinode_api_key=unit-test-key"),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # the inventories' addresses are documentation examples: reaching one would have failed
    assert "unreachable=0" in proc.stdout
    assert "Gathering Facts" not in proc.stdout
    if inventory == "slurm":  # no cluster hosts: the login host's variables are what validate checks
        assert "SLURM inventory: the variables of login-1 (slurm_login) are checked here" in " ".join(
            proc.stdout.split()
        )
