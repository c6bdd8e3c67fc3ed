"""The CLI over the runner: argument parsing, progress from events, exit codes from real runs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from multinode_vllm.cli import build_parser, main
from multinode_vllm.progress import (
    PlainDisplay,
    Progress,
    UsageError,
    options_from_args,
    parse_extra_vars,
    want_plain,
)


@pytest.fixture(autouse=True)
def plain_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    p = tmp_path / "hosts.ini"
    p.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return p


def playbook(tmp_path: Path, tasks: str, name: str = "pb.yml") -> Path:
    pb = tmp_path / name
    pb.write_text(
        "- name: Preflight the local host\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        + textwrap.indent(textwrap.dedent(tasks), "    ")
    )
    return pb


OK_TASKS = """\
- name: Say hello
  ansible.builtin.debug:
    msg: "{{ greeting | default('hi') }}"
- name: Export the endpoint
  ansible.builtin.set_stats:
    data:
      multinode_endpoint: "http://127.0.0.1:8000/v1"
"""

FAIL_TASKS = """\
- name: Stop if the fabric interface is missing
  ansible.builtin.fail:
    msg: "bond0 not found: set multinode_fabric_interface"
"""


# ------------------------------------------------------------------------------ arguments
def test_extra_vars_forms(tmp_path: Path) -> None:
    f = tmp_path / "vars.yml"
    f.write_text("a: 1\nb: [x, y]\n")
    got = parse_extra_vars(["k=v", "x='two words' y=3", f"@{f}", '{"j": true}'])
    assert got == {"k": "v", "x": "two words", "y": "3", "a": 1, "b": ["x", "y"], "j": True}


@pytest.mark.parametrize("bad", ["novalue", "1x=2", "@/nonexistent.yml", "{not: [valid"])
def test_extra_vars_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_extra_vars([bad])


def test_up_args_become_run_options(inv: Path) -> None:
    args = build_parser().parse_args(
        [
            "up",
            "-i",
            str(inv),
            "--tags",
            "cluster,serve",
            "-t",
            "bench",
            "--skip-tags",
            "prepare",
            "--limit",
            "node1",
            "-e",
            "a=1",
            "-vv",
            "--check",
            "--timeout",
            "60",
        ]
    )
    opts = options_from_args(args, playbook="site.yml")
    assert opts.inventory == str(inv)
    assert opts.tags == ("cluster", "serve", "bench")
    assert opts.skip_tags == ("prepare",)
    assert opts.limit == ("node1",)
    assert opts.extra_vars == {"a": "1"}
    assert opts.verbosity == 2 and opts.check and not opts.diff and opts.timeout == 60


def test_every_command_is_registered() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    choices = sub.choices
    assert isinstance(choices, dict)
    assert {"up", "status", "down", "bench"} <= set(choices)


# ---------------------------------------------------------------------------- progress
def ev(kind: str, **data: object) -> dict[str, object]:
    return {"event": kind, "event_data": data}


def test_progress_follows_phase_task_and_hosts() -> None:
    p = Progress()
    assert p.update(ev("playbook_on_play_start", name="Start the Ray cluster")) == "play"
    assert p.phase == "cluster"
    assert p.update(ev("playbook_on_task_start", name="Join the workers")) == "task"
    for h in ("node1", "node2", "node3"):
        p.update(ev("runner_on_start", host=h))
    assert (len(p.hosts_done), p.hosts_total) == (0, 3)
    p.update(ev("runner_on_ok", host="node1", res={"changed": True}))
    p.update(ev("runner_on_skipped", host="node2"))
    assert (len(p.hosts_done), p.hosts_total) == (2, 3)
    assert p.line().startswith("[cluster]  Join the workers  2/3 hosts  ")
    assert p.update(ev("runner_on_failed", host="node3", res={"msg": "boom"})) == "failed"
    assert p.failed == [("node3", "Join the workers", "boom")]
    assert p.changed == 1 and p.tasks_done == 1
    # an ignored failure is not reported
    p.update(ev("playbook_on_task_start", name="Probe"))
    assert p.update(ev("runner_on_failed", host="node1", ignore_errors=True, res={"msg": "x"})) == "host"
    assert len(p.failed) == 1
    assert p.update(ev("runner_on_unreachable", host="node2", res={"msg": "ssh"})) == "failed"
    assert p.unreachable == [("node2", "ssh")]
    assert p.phases_seen == ["cluster"]


def test_plain_display_prints_one_line_per_task_and_failure() -> None:
    out = io.StringIO()
    d = PlainDisplay(out)
    d(ev("playbook_on_play_start", name="Serve vLLM"))
    d(ev("playbook_on_task_start", name="Wait for /health"))
    d(ev("runner_on_start", host="head"))
    d(ev("runner_on_failed", host="head", res={"msg": "timed out"}))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[serve]  Serve vLLM")
    assert lines[1].startswith("[serve]  Wait for /health")
    assert lines[2] == "  FAILED head 'Wait for /health': timed out"


def test_want_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MNV_PLAIN", raising=False)
    assert want_plain(io.StringIO()) is True
    assert want_plain(Tty()) is False
    monkeypatch.setenv("CI", "true")
    assert want_plain(Tty()) is True


# ------------------------------------------------------------------- exit codes (real runs)
def test_up_success_json(inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pb = playbook(tmp_path, OK_TASKS)
    rc = main(["up", "-i", str(inv), "--playbook", str(pb), "--no-smoke", "--json", "-e", "greeting=yo"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert doc["run"]["status"] == "successful"
    assert doc["run"]["hosts"]["localhost"]["ok"] == 2
    assert doc["run"]["endpoint"] == "http://127.0.0.1:8000/v1"
    assert doc["run"]["phases"][0]["phase"] == "preflight"


def test_up_success_plain_progress(inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pb = playbook(tmp_path, OK_TASKS)
    rc = main(["up", "-i", str(inv), "--playbook", str(pb), "--no-smoke"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "[preflight]  Say hello" in err
    assert "localhost        ok=2 changed=0 failed=0 unreachable=0 skipped=0" in err
    assert "endpoint: http://127.0.0.1:8000/v1" in err


def test_up_failed_task_exit_1(inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pb = playbook(tmp_path, FAIL_TASKS)
    rc = main(["up", "-i", str(inv), "--playbook", str(pb), "--no-smoke"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "FAILED: host localhost, task 'Stop if the fabric interface is missing'" in err
    assert "bond0 not found: set multinode_fabric_interface" in err


def test_up_failed_task_json(inv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pb = playbook(tmp_path, FAIL_TASKS)
    rc = main(["up", "-i", str(inv), "--playbook", str(pb), "--no-smoke", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert doc["run"]["status"] == "failed"
    assert doc["error"] == "PlaybookFailed" and doc["host"] == "localhost" and doc["exit_code"] == 1
    assert doc["task"] == "Stop if the fabric interface is missing"
    assert doc["result"]["hosts"]["localhost"]["failed"] == 1


def test_up_unreachable_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "ghost.ini"
    inv.write_text("ghost ansible_host=127.0.0.1 ansible_port=9 ansible_user=nobody\n")
    pb = playbook(tmp_path, "- name: Ping\n  ansible.builtin.ping:\n")
    rc = main(["up", "-i", str(inv), "--playbook", str(pb), "--no-smoke"])
    assert rc == 3
    assert "UNREACHABLE: host ghost, task 'Ping'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "-i", "/nonexistent/inventory", "--no-smoke"],
        ["up", "-i", "ansible.cfg", "--playbook", "no/such.yml", "--no-smoke"],
        ["up", "-i", "ansible.cfg", "-e", "not a pair", "--no-smoke"],
        ["status", "-i", "/nonexistent/inventory"],
        ["down", "-i", "/nonexistent/inventory"],
        ["bench", "--result", "/nonexistent.json"],
    ],
)
def test_bad_input_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.strip()


def test_ctrl_c_stops_the_playbook_and_exits_130(inv: Path, tmp_path: Path) -> None:
    pb = playbook(tmp_path, "- name: Sleep a long time\n  ansible.builtin.command: sleep 180\n  changed_when: false\n")
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "multinode_vllm", "up", "-i", str(inv), "--playbook", str(pb), "--no-smoke"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    t0 = time.monotonic()
    for line in proc.stderr:
        if "Sleep a long time" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=30)
    assert rc == 130, rest
    assert time.monotonic() - t0 < 90  # the 180 s task was stopped, not waited for
    assert "interrupted" in rest
