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


@pytest.mark.parametrize(
    ("playbook", "plays"),
    [
        (
            "playbooks/teardown.yml",
            [
                "Teardown vLLM on every node",
                "Teardown the Dynamo workers",
                "Teardown the Dynamo frontend, then etcd and NATS",
                "SLURM - cancel the vLLM job",
            ],
        ),
        ("playbooks/status.yml", ["Status of every node", "SLURM - status of the vLLM job"]),
        ("site.yml", ["Validate - inventory, variables and the model plan", "SLURM - submit the vLLM job and gate it"]),
    ],
)
def test_one_entry_point_per_step_on_every_path(playbook: str, plays: list[str]) -> None:
    """`multinode-vllm up/status/down` run site.yml, status.yml and teardown.yml: each holds the plays of
    every path (hosts, dynamo, SLURM); a play of a path the inventory does not use finds no host or
    ends at once (playbooks/tasks/stack_only.yml)."""
    proc = ansible_playbook("--list-tasks", "-i", str(ROOT / "inventories" / "dynamo"), playbook)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    listed = [line.split(": ", 1)[1].split("\t")[0] for line in proc.stdout.splitlines() if "play #" in line]
    assert [p for p in listed if p in plays] == plays, listed
    if playbook == "playbooks/teardown.yml":  # each stack's plays end at once on the other's nodes
        assert proc.stdout.count("Leave the play unless multinode_stack is") == 5, proc.stdout
