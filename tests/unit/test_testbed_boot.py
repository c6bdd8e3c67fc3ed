"""The test bed's SSH wait: probes that lengthen, a report of what the node showed, one re-creation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from multinode_vllm.testbed import nodes
from multinode_vllm.testbed.spec import TestbedSpec, plan_networks, plan_nodes
from multinode_vllm.testbed.state import Steps

SPEC = TestbedSpec(name="mnv-unit-boot", nodes=2, layout="bond0", local_inventory=False)
NETS = plan_networks(SPEC)
NODES = plan_nodes(SPEC, NETS)


def test_the_wait_lengthens_its_probes_then_reports_a_boot_error(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[float] = []

    def ssh_ok(ip: str, key: Path, timeout: float = 5) -> bool:
        probes.append(timeout)
        return False

    clock = iter(float(t) for t in range(0, 1000, 10))  # every monotonic() call: 10 s later
    monkeypatch.setattr(nodes, "ssh_ok", ssh_ok)
    monkeypatch.setattr(nodes.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(nodes.time, "sleep", lambda s: None)
    monkeypatch.setattr(nodes, "podman", lambda *a, **k: "running")
    monkeypatch.setattr(nodes, "_boot_failure", lambda name, pending, limit, key: f"{name}: {len(pending)} silent")
    with pytest.raises(nodes.BootError, match="mnv-unit-boot: 2 silent"):
        nodes._wait_ssh(SPEC.name, NODES, Path("/k"), Steps(SPEC.name, quiet=True), limit=90)
    assert probes[0] == nodes.SSH_PROBE_S[0] and probes[-1] == nodes.SSH_PROBE_S[1], probes


def test_a_node_that_stops_while_booting_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "ssh_ok", lambda ip, key, timeout=5: False)
    monkeypatch.setattr(nodes, "podman", lambda *a, **k: "exited")
    monkeypatch.setattr(nodes, "_boot_failure", lambda name, pending, limit, key, state=None: f"stopped: {state}")
    with pytest.raises(nodes.TestbedError, match="stopped: exited") as info:
        nodes._wait_ssh(SPEC.name, NODES, Path("/k"), Steps(SPEC.name, quiet=True))
    assert not isinstance(info.value, nodes.BootError)


def _quiet_up(monkeypatch: pytest.MonkeyPatch, calls: list[str], *, second: Any) -> None:
    def first(spec: TestbedSpec, nets: Any, plan: Any, steps: Steps) -> Any:
        calls.append("up")
        raise nodes.BootError("node1 did not answer SSH; ssh: active")

    def create(spec: TestbedSpec, nets: Any, plan: Any, steps: Steps) -> Any:
        calls.append("create")
        if isinstance(second, Exception):
            raise second
        return second

    monkeypatch.setattr(nodes, "ensure_tools", lambda install: None)
    monkeypatch.setattr(nodes, "_up", first)
    monkeypatch.setattr(nodes, "_create", create)
    monkeypatch.setattr(nodes, "_remove_objects", lambda name: calls.append(f"remove {name}") or {})


def test_up_recreates_a_bed_whose_nodes_do_not_answer_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    _quiet_up(monkeypatch, calls, second="the bed")
    assert nodes.up(SPEC) == "the bed"
    assert calls == ["up", f"remove {SPEC.name}", "create"]
    err = capsys.readouterr().err
    assert "node1 did not answer SSH; ssh: active" in err and "creating them once more" in err


def test_up_raises_the_second_boot_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    _quiet_up(monkeypatch, calls, second=nodes.BootError("still silent"))
    with pytest.raises(nodes.BootError, match="still silent"):
        nodes.up(SPEC)
    assert calls == ["up", f"remove {SPEC.name}", "create"]


def test_the_report_shows_the_node_from_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    class Proc:
        def __init__(self, out: str) -> None:
            self.stdout, self.stderr, self.returncode = out, "", 0

    def run(argv: list[str], **kw: Any) -> Proc:
        if argv[:2] == ["podman", "exec"]:
            return Proc("system: running\nssh: failed active\n")
        if argv[:2] == ["podman", "logs"]:
            return Proc("\n".join(f"boot line {i}" for i in range(30)))
        if argv[0] == "ip":
            raise nodes.TestbedError("timed out after 30s: ip -o route get")
        raise AssertionError(argv)

    monkeypatch.setattr(nodes, "run", run)
    monkeypatch.setattr(nodes, "podman", lambda *a, **k: "running")
    monkeypatch.setattr(nodes, "_ssh_error", lambda ip, key: "Connection refused")
    report = nodes._boot_failure(SPEC.name, NODES[:1], 90, Path("/k"))
    assert f"{NODES[0].container} ({NODES[0].mgmt_ip}): container state 'running'; ssh: Connection refused" in report
    assert "  ssh: failed active" in report and "host route: timed out after 30s" in report
    assert "boot line 29" in report and "boot line 21" not in report  # the last 8 lines of the log
