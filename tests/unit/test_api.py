"""The runner API: kwargs building, stats → RunResult, typed errors; real runs against localhost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import multinode_vllm
from multinode_vllm import PROJECT_DIR, PlaybookFailed, RunOptions, RunResult, run
from multinode_vllm.api import (
    BadInput,
    HostUnreachable,
    InventoryError,
    RunInterrupted,
    RunTimeout,
    build_result,
    build_runner_kwargs,
    failures_from_events,
    hosts_from_stats,
    phase_of,
    phase_times,
    raise_for_result,
)


@pytest.fixture
def playbook(tmp_path: Path) -> Path:
    pb = tmp_path / "noop.yml"
    pb.write_text("- name: Noop\n  hosts: all\n  gather_facts: false\n  tasks: []\n")
    return pb


@pytest.fixture
def local_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return inv


def write_playbook(tmp_path: Path, body: str, name: str = "pb.yml") -> Path:
    pb = tmp_path / name
    pb.write_text(textwrap.dedent(body))
    return pb


# ------------------------------------------------------------------------------------ kwargs
def test_kwargs_join_tags_and_limit_and_point_at_the_repo(
    local_inventory: Path, playbook: Path, tmp_path: Path
) -> None:
    opts = RunOptions(
        inventory=local_inventory,
        playbook=str(playbook),
        tags=("cluster", "serve"),
        skip_tags=("bench",),
        limit=("node1", "node2"),
        extra_vars={"a": 1},
        verbosity=2,
        timeout=90,
        env={"FOO": "bar"},
    )
    kw = build_runner_kwargs(opts, tmp_path / "pdd")
    assert kw["tags"] == "cluster,serve"
    assert kw["skip_tags"] == "bench"
    assert kw["limit"] == "node1,node2"
    assert kw["project_dir"] == str(PROJECT_DIR)
    assert kw["playbook"] == str(playbook)
    assert kw["private_data_dir"] == str(tmp_path / "pdd")
    assert kw["inventory"] == str(local_inventory)
    assert kw["envvars"]["ANSIBLE_CONFIG"] == str(PROJECT_DIR / "ansible.cfg")
    assert kw["envvars"]["FOO"] == "bar"
    assert kw["envvars"]["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert kw["extravars"] == {"a": 1}
    assert kw["verbosity"] == 2
    assert kw["timeout"] == 90
    assert kw["quiet"] is True
    assert "cmdline" not in kw


def test_kwargs_defaults_have_no_empty_tags(playbook: Path, tmp_path: Path) -> None:
    kw = build_runner_kwargs(RunOptions(inventory="ansible.cfg", playbook=str(playbook)), tmp_path)
    assert "tags" not in kw and "skip_tags" not in kw and "limit" not in kw
    assert "timeout" not in kw and "cmdline" not in kw and not kw["verbosity"]


def test_default_inventory_is_inventories_local(playbook: Path, tmp_path: Path) -> None:
    local = PROJECT_DIR / "inventories" / "local"
    opts = RunOptions(playbook=str(playbook))
    if local.exists():
        assert build_runner_kwargs(opts, tmp_path)["inventory"] == str(local)
    else:
        with pytest.raises(InventoryError, match="inventories/local does not exist"):
            build_runner_kwargs(opts, tmp_path)


def test_kwargs_check_diff_vault_on_the_cmdline(local_inventory: Path, playbook: Path, tmp_path: Path) -> None:
    vault = tmp_path / "vault pass"
    vault.write_text("secret\n")
    opts = RunOptions(
        inventory=local_inventory, playbook=str(playbook), check=True, diff=True, vault_password_file=vault
    )
    kw = build_runner_kwargs(opts, tmp_path)
    assert kw["cmdline"] == f"--check --diff --vault-password-file '{vault}'"


def test_kwargs_relative_inventory_is_relative_to_the_repo(playbook: Path, tmp_path: Path) -> None:
    kw = build_runner_kwargs(RunOptions(inventory="ansible.cfg", playbook=str(playbook)), tmp_path)
    assert kw["inventory"] == str(PROJECT_DIR / "ansible.cfg")


@pytest.mark.parametrize(
    ("opts", "error", "needle"),
    [
        (
            {"inventory": "/nonexistent/inv"},
            InventoryError,
            "inventory /nonexistent/inv does not exist",
        ),
        ({"inventory": "ansible.cfg", "playbook": "nope.yml"}, BadInput, "nope.yml does not exist"),
        ({"inventory": "ansible.cfg", "vault_password_file": "/nonexistent/v"}, BadInput, "vault password"),
    ],
)
def test_kwargs_bad_input_exits_2(
    opts: dict[str, Any], error: type[Exception], needle: str, playbook: Path, tmp_path: Path
) -> None:
    with pytest.raises(error, match=needle) as err:
        build_runner_kwargs(RunOptions(**{"playbook": str(playbook), **opts}), tmp_path)
    assert isinstance(err.value, BadInput) and err.value.exit_code == 2


def test_options_are_frozen() -> None:
    opts = RunOptions()
    with pytest.raises(AttributeError):
        opts.playbook = "x.yml"  # type: ignore[misc]


# ----------------------------------------------------------------------- stats → RunResult
STATS = {
    "ok": {"node1": 12, "node2": 9},
    "changed": {"node1": 3},
    "failures": {"node2": 1},
    "dark": {},
    "skipped": {"node1": 2, "node2": 4},
    "rescued": {},
    "ignored": {"node1": 1},
    "processed": {"node1": 1, "node2": 1},
}


def ev(kind: str, t: str, **data: object) -> dict[str, object]:
    return {"event": kind, "created": f"2026-11-24T10:00:{t}+00:00", "event_data": data}


EVENTS = [
    ev("playbook_on_start", "00.000"),
    ev("playbook_on_play_start", "00.500", name="Validate the inventory"),
    ev("playbook_on_task_start", "00.600", name="Check"),
    ev("runner_on_ok", "01.000", host="node1", task="Check", res={"changed": False}),
    ev("playbook_on_play_start", "02.500", name="Start the Ray cluster"),
    ev("runner_on_failed", "03.000", host="node1", task="Probe", ignore_errors=True, res={"msg": "fine"}),
    ev("playbook_on_play_start", "12.500", name="Serve vLLM on the head"),
    ev("runner_on_ok", "13.000", host="node1", task="Export", res={"ansible_facts": {}}),
    ev(
        "runner_on_failed",
        "40.250",
        host="node2",
        task="Wait for /health",
        play="Serve vLLM on the head",
        ignore_errors=False,
        res={"msg": "Status code was -1", "stderr": "connection refused"},
    ),
    ev(
        "playbook_on_stats",
        "40.500",
        artifact_data={"multinode_endpoint": "http://10.0.0.1:8000/v1"},
        **STATS,
    ),
]


def test_hosts_from_stats_maps_every_counter() -> None:
    hosts = hosts_from_stats(STATS)
    assert sorted(hosts) == ["node1", "node2"]
    assert hosts["node1"].ok == 12 and hosts["node1"].changed == 3 and hosts["node1"].ignored == 1
    assert hosts["node2"].failed == 1 and hosts["node2"].skipped == 4 and hosts["node2"].changed == 0
    assert hosts_from_stats(None) == {}


def test_phase_times_from_play_starts() -> None:
    phases = phase_times(EVENTS)
    assert [p.phase for p in phases] == ["validate", "cluster", "serve"]
    assert [round(p.seconds, 3) for p in phases] == [2.0, 10.0, 28.0]


@pytest.mark.parametrize(
    ("name", "phase"),
    [
        ("Preflight: stop if the fabric is wrong", "preflight"),
        ("Bench the endpoint", "bench"),
        ("Teardown", "teardown"),
        ("Dynamo plane - etcd and NATS on the head", "dynamo"),
        ("Something else", "Something else"),
    ],
)
def test_phase_of(name: str, phase: str) -> None:
    assert phase_of(name) == phase


def test_build_result_collects_stats_endpoint_and_fatal_failures() -> None:
    result = build_result("failed", 2, STATS, EVENTS, 41.0)
    assert result.status == "failed" and result.rc == 2 and not result.ok
    assert result.endpoint == "http://10.0.0.1:8000/v1"
    assert result.exported == {"multinode_endpoint": "http://10.0.0.1:8000/v1"}
    assert result.phase_seconds() == {"validate": 2.0, "cluster": 10.0, "serve": 28.0}
    # the ignored failure is not fatal; the /health one is
    assert [(f.host, f.task) for f in result.failures] == [("node2", "Wait for /health")]
    assert result.changed == 3
    doc = result.to_dict()
    assert doc["hosts"]["node2"]["failed"] == 1
    assert doc["failures"][0]["message"] == "Status code was -1\nconnection refused"


def test_endpoint_falls_back_to_a_returned_fact() -> None:
    events = [ev("runner_on_ok", "01.0", host="h", res={"ansible_facts": {"vllm_serve_endpoint": "http://x:1"}})]
    assert build_result("successful", 0, {}, events, 1.0).endpoint == "http://x:1"
    assert build_result("successful", 0, {}, [], 1.0).endpoint is None


# --------------------------------------------------------------------------------- errors
def test_failed_run_raises_playbook_failed_with_host_task_message() -> None:
    result = build_result("failed", 2, STATS, EVENTS, 41.0)
    with pytest.raises(PlaybookFailed) as err:
        raise_for_result(result)
    assert type(err.value) is PlaybookFailed
    assert err.value.host == "node2"
    assert err.value.task == "Wait for /health"
    assert err.value.play == "Serve vLLM on the head"
    assert "connection refused" in err.value.message
    assert err.value.result is result
    assert err.value.exit_code == 1


def test_unreachable_wins_and_exits_3() -> None:
    events = [
        *EVENTS[:-1],
        ev("runner_on_unreachable", "41.0", host="node3", task="Gather facts", res={"msg": "ssh: timed out"}),
    ]
    with pytest.raises(HostUnreachable) as err:
        raise_for_result(build_result("failed", 4, STATS, events, 41.0))
    assert (err.value.host, err.value.message, err.value.exit_code) == ("node3", "ssh: timed out", 3)


def test_loop_failure_message_comes_from_the_failed_item() -> None:
    events = [
        ev(
            "runner_on_failed",
            "1.0",
            host="h",
            task="Loop",
            res={"results": [{"failed": False}, {"failed": True, "msg": "item two broke"}]},
        )
    ]
    assert failures_from_events(events)[0].message == "item two broke"


def test_timeout_and_cancel_and_empty_inventory() -> None:
    with pytest.raises(RunTimeout):
        raise_for_result(build_result("timeout", 254, None, [], 5.0))
    with pytest.raises(RunInterrupted) as err:
        raise_for_result(build_result("canceled", 254, None, [], 5.0))
    assert err.value.exit_code == 130
    with pytest.raises(InventoryError, match="Could not match"):
        raise_for_result(
            build_result("failed", 1, None, [], 1.0),
            stdout="[WARNING]: Could not match supplied host pattern, ignoring: ray_head\n",
        )
    with pytest.raises(PlaybookFailed, match="no failed task"):
        raise_for_result(build_result("failed", 1, None, [], 1.0), stdout="ERROR! something\n")


def test_success_returns_the_result() -> None:
    result = build_result("successful", 0, STATS, EVENTS[:4], 1.0)
    assert raise_for_result(result) is result


# ------------------------------------------------------------------------- real runs (fast)
def test_exports_from_the_package() -> None:
    assert multinode_vllm.run is run
    assert multinode_vllm.RunResult is RunResult
    assert multinode_vllm.PROJECT_DIR == PROJECT_DIR
    assert multinode_vllm.__version__


def test_real_run_success_with_events_stats_and_endpoint(local_inventory: Path, tmp_path: Path) -> None:
    pb = write_playbook(
        tmp_path,
        """\
        - name: Validate the local host
          hosts: all
          gather_facts: false
          tasks:
            - name: Say hello
              ansible.builtin.debug:
                msg: "hello {{ greeting }}"
            - name: Touch a file
              ansible.builtin.file:
                path: "{{ out }}"
                state: touch
                mode: "0644"
        - name: Serve nothing
          hosts: all
          gather_facts: false
          tags: [serve]
          tasks:
            - name: Export the endpoint
              ansible.builtin.set_stats:
                data:
                  multinode_endpoint: http://127.0.0.1:8000/v1
        """,
    )
    seen: list[str] = []
    result = run(
        RunOptions(
            inventory=local_inventory,
            playbook=str(pb),
            extra_vars={"greeting": "world", "out": str(tmp_path / "touched")},
        ),
        on_event=lambda e: seen.append(str(e.get("event"))),
    )
    assert result.status == "successful" and result.rc == 0
    assert (tmp_path / "touched").exists()
    assert result.hosts["localhost"].ok == 3
    assert result.hosts["localhost"].changed == 1
    assert result.hosts["localhost"].failed == 0
    assert result.endpoint == "http://127.0.0.1:8000/v1"
    assert [p.phase for p in result.phases] == ["validate", "serve"]
    assert all(p.seconds >= 0 for p in result.phases)
    assert seen[0] == "playbook_on_start" and seen[-1] == "playbook_on_stats"
    assert seen.count("runner_on_ok") == 3
    assert result.elapsed > 0

    # tags reach ansible-playbook: only the serve play runs
    tagged = run(RunOptions(inventory=local_inventory, playbook=str(pb), tags=("serve",), extra_vars={"out": "x"}))
    assert tagged.hosts["localhost"].ok == 1


def test_real_run_failure_is_typed(local_inventory: Path, tmp_path: Path) -> None:
    pb = write_playbook(
        tmp_path,
        """\
        - name: Preflight
          hosts: all
          gather_facts: false
          tasks:
            - name: Stop if the answer is wrong
              ansible.builtin.assert:
                that: 6 * 7 == 43
                fail_msg: "the answer is 42, set multinode_answer"
            - name: Never reached
              ansible.builtin.debug:
                msg: unreachable
        """,
    )
    with pytest.raises(PlaybookFailed) as err:
        run(RunOptions(inventory=local_inventory, playbook=str(pb)))
    assert type(err.value) is PlaybookFailed
    assert err.value.host == "localhost"
    assert err.value.task == "Stop if the answer is wrong"
    assert err.value.message == "the answer is 42, set multinode_answer"
    assert err.value.result is not None and err.value.result.hosts["localhost"].failed == 1
    assert err.value.result.hosts["localhost"].ok == 0


def test_real_run_unreachable_host(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    # port 9 on loopback: nothing listens, ssh fails at once
    inv.write_text("ghost ansible_host=127.0.0.1 ansible_port=9 ansible_user=nobody\n")
    pb = write_playbook(
        tmp_path,
        """\
        - name: Ping
          hosts: all
          gather_facts: false
          tasks:
            - name: Ping the host
              ansible.builtin.ping:
        """,
    )
    with pytest.raises(HostUnreachable) as err:
        run(RunOptions(inventory=inv, playbook=str(pb)))
    assert err.value.host == "ghost" and err.value.exit_code == 3
    assert err.value.result is not None and err.value.result.hosts["ghost"].unreachable == 1


def test_real_run_timeout(local_inventory: Path, tmp_path: Path) -> None:
    pb = write_playbook(
        tmp_path,
        """\
        - name: Slow
          hosts: all
          gather_facts: false
          tasks:
            - name: Sleep
              ansible.builtin.command: sleep 120
              changed_when: false
        """,
    )
    with pytest.raises(RunTimeout) as err:
        run(RunOptions(inventory=local_inventory, playbook=str(pb), timeout=3))
    assert err.value.result is not None and err.value.result.elapsed < 60  # not the 120 s task


def processes() -> dict[int, str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(pid): args for pid, _, args in (line.strip().partition(" ") for line in out.splitlines())}


def test_sigterm_stops_the_playbook_instead_of_orphaning_it(tmp_path: Path, local_inventory: Path) -> None:
    """`kill PID` of a script using run() cancels the run: ansible-playbook does not outlive it."""
    marker = f"sleep {os.getpid() % 1000 + 100}.{time.time_ns() % 10**6}"  # this run's own sleep
    pb = write_playbook(
        tmp_path,
        f"""\
        - name: Long
          hosts: all
          gather_facts: false
          tasks:
            - name: Wait
              ansible.builtin.command: {marker}
              changed_when: false
        """,
    )
    script = tmp_path / "user.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            from multinode_vllm import RunOptions, run
            from multinode_vllm.api import RunInterrupted
            try:
                run(RunOptions(inventory={str(local_inventory)!r}, playbook={str(pb)!r}))
            except RunInterrupted as exc:
                print("INTERRUPTED", exc)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and marker not in processes().values():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    time.sleep(1)
    left = {pid: a for pid, a in processes().items() if str(pb) in a or a == marker}
    for pid, args in left.items():  # the module's own sleep may outlive ansible-playbook (local connection)
        if args == marker:
            os.kill(pid, signal.SIGKILL)
    assert "INTERRUPTED" in out, out + err[-3000:]
    assert not [a for a in left.values() if str(pb) in a], left
