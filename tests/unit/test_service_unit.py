"""service_unit: the validate option checks the unit's second file before anything changes.

Fake `systemctl` and a fake checker on PATH stand in for the node (the hardware boundary); the
unit directory is a temporary one. The writing, the validation and the start decision are the
module's real code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.modules import service_unit


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A unit dir, and systemctl/nft-check fakes that log their calls to tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "etc").mkdir()
    calls = tmp_path / "calls"
    calls.write_text("")
    # `systemctl show` of an inactive unit; every other verb succeeds
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\necho "systemctl $*" >> {calls}\n'
        'if [ "$1" = show ]; then printf "ActiveState=inactive\\nSubState=dead\\nNeedDaemonReload=no\\n"; fi\n'
        'if [ "$1" = is-enabled ]; then echo disabled; fi\n'
    )
    # a ruleset checker: accepts a file that holds "table", refuses anything else
    (bin_dir / "fake-nft").write_text(
        f'#!/bin/sh\necho "fake-nft $*" >> {calls}\n'
        'grep -q "^table" "$3" || { echo "Error: syntax error, unexpected junk" >&2; exit 1; }\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(service_unit, "unit_path", lambda name: str(tmp_path / "etc" / f"{name}.service"))
    monkeypatch.setattr(os, "chown", lambda *a: None)  # root:root is what the node gets
    return tmp_path


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        service_unit.main()
    return json.loads(capsys.readouterr().out)


def args(node: Path, ruleset: str) -> dict[str, Any]:
    return {
        "name": "fw",
        "unit": "[Service]\nExecStart=/usr/sbin/nft -f /etc/fw.nft\n",
        "config": ruleset,
        "config_path": str(node / "etc" / "fw.nft"),
        "validate": "fake-nft -c -f %s",
    }


def test_a_refused_ruleset_changes_nothing(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(args(node, "junk {"), capsys)
    assert out["failed"] is True
    assert out["msg"].startswith(f"fake-nft -c -f %s refused the new {node}/etc/fw.nft (rc=1), nothing changed")
    assert "syntax error, unexpected junk" in out["msg"]
    assert not (node / "etc" / "fw.nft").exists() and not (node / "etc" / "fw.service").exists()
    calls = (node / "calls").read_text()
    assert "fake-nft -c -f" in calls and "systemctl start" not in calls
    assert not [p for p in (node / "etc").iterdir() if ".check." in p.name]  # the temporary copy is gone


def test_an_accepted_ruleset_is_written_and_the_unit_started(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(args(node, "table inet fw {\n}"), capsys)
    assert out.get("failed") is not True, out
    assert out["action"] == "started" and out["changed"] is True
    assert (node / "etc" / "fw.nft").read_text() == "table inet fw {\n}\n"
    assert (node / "etc" / "fw.nft").stat().st_mode & 0o777 == 0o600
    calls = (node / "calls").read_text().splitlines()
    assert calls.index("systemctl start fw.service") > calls.index(next(c for c in calls if c.startswith("fake-nft")))


def test_an_unchanged_ruleset_is_not_validated_again(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (node / "etc" / "fw.nft").write_text("table inet fw {\n}\n")
    run_main(args(node, "table inet fw {\n}"), capsys)
    assert "fake-nft" not in (node / "calls").read_text()


def running_node(node: Path, ruleset: str) -> None:
    """The unit and its ruleset already in place and running since after they were written; a
    `systemctl restart` (re)loads the table (the file `loaded`), which `fake-list` reads."""
    (node / "etc" / "fw.service").write_text("[Service]\nExecStart=/usr/sbin/nft -f /etc/fw.nft\n")
    (node / "etc" / "fw.nft").write_text(ruleset + "\n")
    (node / "etc" / "fw.nft").chmod(0o600)
    calls = node / "calls"
    since = int(time.time()) + 60
    (node / "bin" / "systemctl").write_text(
        f'#!/bin/sh\necho "systemctl $*" >> {calls}\n'
        'if [ "$1" = show ]; then printf "ActiveState=active\\nSubState=exited\\nNeedDaemonReload=no\\n'
        f'ActiveEnterTimestamp=@{since}\\nFragmentPath={node}/etc/fw.service\\nNRestarts=0\\n"; fi\n'
        'if [ "$1" = is-enabled ]; then echo enabled; fi\n'
        f'if [ "$1" = restart ]; then touch {node}/loaded; fi\n'
    )
    (node / "bin" / "fake-list").write_text(
        f'#!/bin/sh\necho "fake-list $*" >> {calls}\n'
        f'[ -e {node}/loaded ] && {{ echo "table inet fw {{ chain input {{ }} }}"; exit 0; }}\n'
        'echo "Error: No such file or directory" >&2; exit 1\n'
    )
    (node / "bin" / "fake-list").chmod(0o755)


def test_verify_reads_the_loaded_table_in_the_same_call(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running_node(node, "table inet fw {\n}")
    (node / "loaded").touch()
    out = run_main({**args(node, "table inet fw {\n}"), "verify": "fake-list table inet fw"}, capsys)
    assert out["changed"] is False and out["action"] == "none", out
    assert out["verify"]["rc"] == 0 and "chain input" in out["verify"]["stdout"]
    assert "systemctl restart" not in (node / "calls").read_text()


def test_a_table_flushed_behind_the_running_unit_is_loaded_again(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running_node(node, "table inet fw {\n}")  # active, files unchanged, but the table is gone
    out = run_main({**args(node, "table inet fw {\n}"), "verify": "fake-list table inet fw"}, capsys)
    assert out["changed"] is True and out["action"] == "restarted", out
    assert out["reasons"] == ["fake-list table inet fw failed on the running unit: Error: No such file or directory"]
    assert out["verify"]["rc"] == 0 and "chain input" in out["verify"]["stdout"]
    calls = (node / "calls").read_text().splitlines()
    assert calls.count("fake-list table inet fw") == 2 and "systemctl restart fw.service" in calls


def test_verify_is_not_run_in_check_mode(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    running_node(node, "table inet fw {\n}")
    a = {**args(node, "table inet fw {\n}"), "verify": "fake-list table inet fw", "_ansible_check_mode": True}
    out = run_main(a, capsys)
    assert "verify" not in out and out["changed"] is False
    assert "fake-list" not in (node / "calls").read_text()


def test_an_unmet_requirement_changes_nothing_and_says_so(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the program is missing (nft not installed): no crash, nothing written or started, met=false
    out = run_main({**args(node, "table inet fw {\n}"), "requires": "no-such-nft list tables"}, capsys)
    assert out.get("failed") is not True and out["changed"] is False and out["action"] == "none", out
    assert out["requirement"]["met"] is False and out["requirement"]["rc"] == 127
    assert "no-such-nft" in out["requirement"]["stderr"]
    assert not (node / "etc" / "fw.nft").exists() and not (node / "etc" / "fw.service").exists()
    assert (node / "calls").read_text() == ""
    # the program answers but refuses (no CAP_NET_ADMIN): the same, with its stderr
    (node / "bin" / "deny").write_text('#!/bin/sh\necho "Operation not permitted" >&2; exit 1\n')
    (node / "bin" / "deny").chmod(0o755)
    out = run_main({**args(node, "table inet fw {\n}"), "requires": "deny list tables"}, capsys)
    assert out["requirement"] == {"met": False, "rc": 1, "stdout": "", "stderr": "Operation not permitted\n"}
    assert "systemctl" not in (node / "calls").read_text()


def test_a_met_requirement_goes_on_in_the_same_call(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**args(node, "table inet fw {\n}"), "requires": "true"}, capsys)
    assert out["requirement"]["met"] is True and out["action"] == "started", out
    assert "systemctl start fw.service" in (node / "calls").read_text()
