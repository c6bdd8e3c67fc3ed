"""The generated Ray token lives beside the inventory, where Ansible never reads it as a host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
TOKEN = "elkhfn5XPhucGOeqE7hsxG3x0AA5zfoYys8KYriovUbPhjez"


def hosts_of(inventory: Path) -> list[str]:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", str(inventory), "--list"],
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(json.loads(out)["_meta"]["hostvars"])


def test_default_credentials_dir_is_not_read_as_inventory(tmp_path: Path) -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "multinode" / "defaults" / "main.yml").read_text())
    rel = defaults["multinode_credentials_dir"].split("}}", 1)[1].strip("/")
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    node1:\n")
    (tmp_path / rel).mkdir()
    (tmp_path / rel / "ray-auth-token").write_text(TOKEN + "\n")
    assert hosts_of(tmp_path) == ["node1"]
    # where it was before: the token became an inventory host (and showed in `ansible all` output)
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "ray-auth-token").write_text(TOKEN + "\n")
    assert TOKEN.lower() in [h.lower() for h in hosts_of(tmp_path)]
