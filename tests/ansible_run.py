"""Run the controller's ansible-playbook from the repository root, as the tests need it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)

# A module standing in for the preflight facts modules (NIC, GPU, InfiniBand reads): it returns
# the facts it is given. Rendering tests put it on ANSIBLE_LIBRARY as `fake_facts`.
FAKE_FACTS_MODULE = """\
#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
m = AnsibleModule(argument_spec=dict(facts=dict(type='dict', required=True)), supports_check_mode=True)
m.exit_json(changed=False, ansible_facts=m.params['facts'])
"""


def role_vars_files(*roles: str) -> str:
    """`vars_files:` entries (indented for a play) with each role's defaults, then its vars."""
    return "\n".join(f"    - {ROOT}/roles/{role}/{kind}/main.yml" for role in roles for kind in ("defaults", "vars"))


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


def local_cluster_inventory(head: dict[str, dict[str, Any]], workers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An inventory of the vllm_cluster groups (one head, its workers) whose hosts all run on this
    machine with this Python: the host variables as given (each host's ``node_facts`` for fake_facts)."""
    return {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {
                "vllm_cluster": {"children": {"ray_head": {"hosts": head}, "ray_workers": {"hosts": workers}}}
            },
        }
    }
