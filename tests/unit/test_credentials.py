"""The API key fails closed (plugins/module_utils/_credentials.py, the multinode.vllm.api_key lookup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from multinode_vllm.module_utils._credentials import KEY_LENGTH, read_api_key, resolve_api_key

from multinode_vllm import PROJECT_DIR

BIN = Path(PROJECT_DIR) / ".venv" / "bin"


def test_no_key_generates_one_0600_and_reuses_it(tmp_path: Path) -> None:
    creds = tmp_path / "inv" / ".credentials"
    key = resolve_api_key("", False, str(creds))
    assert len(key) == KEY_LENGTH and key.isalnum()
    assert (creds / "api-key").stat().st_mode & 0o777 == 0o600
    assert creds.stat().st_mode & 0o777 == 0o700
    assert resolve_api_key("", False, str(creds)) == key  # reused, not regenerated
    assert read_api_key(str(creds)) == key


def test_runs_at_once_agree_on_one_key_and_never_see_it_half_written(tmp_path: Path) -> None:
    """Every host of a play evaluates the lookup in its own fork at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    creds = str(tmp_path / ".credentials")
    with ThreadPoolExecutor(max_workers=16) as pool:
        keys = set(pool.map(lambda _n: resolve_api_key("", False, creds), range(64)))
    assert keys == {read_api_key(creds)}, keys
    assert sorted(os.listdir(creds)) == ["api-key"]  # no temporary file left


def test_given_key_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert resolve_api_key("from-the-vault", False, str(tmp_path / "c")) == "from-the-vault"
    assert not (tmp_path / "c").exists()


def test_open_api_has_no_key(tmp_path: Path) -> None:
    assert resolve_api_key("", True, str(tmp_path / "c")) == ""
    assert not (tmp_path / "c").exists()


def test_an_empty_key_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text("\n")
    with pytest.raises(ValueError, match="api-key is empty: delete it"):
        resolve_api_key("", False, str(tmp_path))


def test_the_lookup_serves_the_same_key(tmp_path: Path) -> None:
    """Through Ansible: the lookup the serve phase and the bench phase use."""
    creds = tmp_path / ".credentials"
    play = tmp_path / "key.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        dest: " + str(tmp_path / "out.json") + "\n"
        "        content: \"{{ {'generated': lookup('multinode.vllm.api_key', dir=d),"
        " 'open': lookup('multinode.vllm.api_key', dir=d, open=true),"
        " 'given': lookup('multinode.vllm.api_key', key='k1', dir=d)} | to_json }}\"\n"
        "      vars:\n        d: " + str(creds) + "\n"
    )
    env = {**os.environ, "ANSIBLE_CONFIG": str(Path(PROJECT_DIR) / "ansible.cfg")}
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_DIR,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {"generated": read_api_key(str(creds)), "open": "", "given": "k1"}


def test_the_cli_reads_the_key_from_the_same_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from multinode_vllm.commands.bench import api_key_for
    from multinode_vllm.progress import UsageError

    monkeypatch.delenv("MULTINODE_API_KEY", raising=False)
    inv = tmp_path / "inv"
    inv.mkdir()
    generated = resolve_api_key("", False, str(inv / ".credentials"))
    assert api_key_for(inv, {}) == generated
    assert api_key_for(inv / "hosts.yml", {"multinode_api_key": ""}) == generated
    assert api_key_for(inv, {"multinode_api_key": "literal"}) == "literal"
    assert api_key_for(inv, {"multinode_api_open": True}) is None
    with pytest.raises(UsageError, match="export MULTINODE_API_KEY"):
        api_key_for(inv, {"multinode_api_key": "{{ vault_multinode_api_key }}"})  # no head to ask Ansible for
    assert api_key_for(tmp_path / "nowhere", {}) is None  # nothing generated yet: no key to send
    monkeypatch.setenv("MULTINODE_API_KEY", "from-env")
    assert api_key_for(inv, {"multinode_api_key": "{{ vault_multinode_api_key }}"}) == "from-env"


def test_the_cli_reads_a_vaulted_key_through_ansible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key from the vault (a template naming a vaulted variable, or an inline !vault string): the CLI
    asks Ansible with the vault password file, as the playbooks do; without it, it says what to give."""
    from multinode_vllm.commands.bench import _endpoint_from_inventory, api_key_for
    from multinode_vllm.progress import UsageError

    monkeypatch.delenv("MULTINODE_API_KEY", raising=False)
    bin_dir = Path(sys.executable).parent
    pw = tmp_path / "vault-pass"
    pw.write_text("correct horse\n")
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    vllm_cluster:\n      children:\n        ray_head:\n"
        "          hosts:\n            node1: {ansible_host: 10.9.0.11, multinode_vllm_port: 8123}\n"
    )
    (inv / "group_vars" / "all" / "serve.yml").write_text('multinode_api_key: "{{ vault_multinode_api_key }}"\n')
    vault = inv / "group_vars" / "all" / "vault.yml"
    vault.write_text("vault_multinode_api_key: 'vaulted-key-123'\n")
    subprocess.run(
        [str(bin_dir / "ansible-vault"), "encrypt", "--vault-password-file", str(pw), str(vault)],
        check=True,
        capture_output=True,
    )
    assert "vaulted-key-123" not in vault.read_text()

    ep = _endpoint_from_inventory(inv, None, str(pw))
    assert (ep.base_url, ep.api_key) == ("http://10.9.0.11:8123", "vaulted-key-123")
    with pytest.raises(UsageError, match="Fix: give --vault-password-file FILE"):
        _endpoint_from_inventory(inv, None)  # ansible-inventory itself cannot read the vaulted file
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("wrong\n")
    with pytest.raises(UsageError, match=r"ansible-inventory .* failed: .*[Dd]ecrypt"):
        _endpoint_from_inventory(inv, None, str(wrong))

    # an inline !vault string, as ansible-inventory lists it
    inline = subprocess.run(
        [
            str(bin_dir / "ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(pw),
            "inline-key-456",
            "--name",
            "multinode_api_key",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    vault.unlink()
    (inv / "group_vars" / "all" / "serve.yml").write_text(inline)
    hv = {"multinode_api_key": {"__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256\n..."}}
    assert api_key_for(inv, hv, head="node1", vault_password_file=str(pw)) == "inline-key-456"
