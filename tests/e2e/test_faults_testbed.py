"""Fault injection on the simulated cluster: each fault is reported by status and healed by a rerun.

On the session test bed (``mnv-e2e``, 2 nodes, bond0, native runtime, ray backend, the tiny Llama
with PP 2 across the two nodes; shared with test_serve_testbed.py, which leaves it torn down, so the
bring-up here is a converge from stopped, not from bare nodes) the serving path (cluster.yml +
serve.yml) runs once, then, one after the other:

1. a worker's Ray killed and kept down (SIGKILL, then ``systemctl stop``);
2. vLLM killed (SIGKILL of its main PID; systemd's Restart=on-failure races the rerun);
3. a node stopped and started again (``podman stop`` / ``podman start``: IPs and enabled units kept);
4. the head's Ray killed (SIGKILL; systemd restarts it as a new, empty cluster: status reports Ray
   incomplete, the head's unit or vLLM's /health, unless systemd has healed the group before a
   status run could look, which is accepted only with the evidence: healthy, and the head's Ray and
   vLLM both started again after the kill);
5. a play interrupted mid-phase, twice: right after the serve phase converged a changed vllm unit,
   and right after the cluster phase converged a changed ray-worker unit (Ctrl-C; a second Ctrl-C
   and SIGKILL when ansible-playbook swallows the first, as it can): the unit and its process agree
   (multinode.vllm.service_unit writes and restarts in one call); then the narrower window that is
   left (the module itself killed between its write and its restart) is made by hand: the unit on
   disk changed after its process started;
6. /dev/shm filled on the head (the cluster phase stops before changing anything, naming /dev/shm
   and the fix; the operator's fix is to remove the file, then the rerun converges).

For each: ``multinode-vllm status --json`` must report the fault (its ``problems``), ONE rerun of the
serving path must converge (fault 6: one refused rerun, the fix, one rerun), and after it /health
is 200, a chat completion returns text, Ray sees both nodes, vLLM is younger than every Ray unit,
and the model cache (file list, sizes, SHA-256) is what it was before the first fault.
Times (inject → reported, rerun) and pass/fail per fault are printed (pytest -s) and written to
benchmarks/results/faults-<UTC>.json.

Run it under the heavy lock: ``flock /tmp/mnv-heavy.lock .venv/bin/pytest -s -m e2e
tests/e2e/test_faults_testbed.py`` (about 17 minutes on 2 cores). MNV_E2E_KEEP=1 keeps the bed. Every
fault is healed before the next; at the end the bed's Ray and vLLM are stopped (idle engines would
take CPU from the modules after this one; the next converge starts them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_beds import cli_status
from test_serve_testbed import CLUSTER_SERVE, Story, node_venv, recap

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb
from multinode_vllm.testbed.nodes import ssh_ok

pytestmark = pytest.mark.e2e

RERUN_TIMEOUT = 900
STATUS_TIMEOUT = 300
DETECT_WITHIN = 240  # seconds from the injection to a status run that reports the fault
VENV_BIN = Path(PROJECT_DIR) / ".venv" / "bin"
RESULTS_DIR = Path(PROJECT_DIR) / "benchmarks" / "results"
SHM_FILL = "/dev/shm/mnv-fault-fill"

RESULTS: list[dict[str, Any]] = []
RUN: dict[str, Any] = {}


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class FaultStory(Story):
    """Story's node, health and chat helpers, plus runs that report instead of failing."""

    def __init__(self, bed: tb.Testbed, run_ansible: Callable[..., Any], env: dict[str, str]) -> None:
        super().__init__(bed, run_ansible)
        self.env = env
        self.cache: dict[str, tuple[int, str]] = {}

    # --- runs ------------------------------------------------------------------------------
    def converge(self, label: str) -> tuple[subprocess.CompletedProcess[str], float]:
        """One run of the serving path (cluster.yml + serve.yml); never fails by itself."""
        t0 = time.monotonic()
        proc = self._run("ansible-playbook", *self.playbook_args(*CLUSTER_SERVE), timeout=RERUN_TIMEOUT)
        secs = round(time.monotonic() - t0, 1)
        say(f"{label}: rc={proc.returncode} in {secs} s, recap {recap(proc.stdout)}")
        return proc, secs

    def status(self) -> tuple[int, dict[str, Any], float]:
        """`multinode-vllm status --json`: (exit code, the exported multinode_status, seconds)."""
        t0 = time.monotonic()
        proc, st = cli_status(self.env, self.tb.inventory, self.extra, timeout=STATUS_TIMEOUT)
        secs = round(time.monotonic() - t0, 1)
        if st is None:
            say(f"status printed no JSON (rc={proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        return proc.returncode, st or {}, secs

    # --- what serving means -------------------------------------------------------------------
    def ray_nodes_alive(self) -> int:
        # Story.ray_cli is "[VAR=VALUE ...] /path/bin/ray" (Ray token auth): run it through env(1)
        out = self.node_sh(
            1, f"timeout 60 env {self.ray_cli} status --address {self.head_fabric}:6379", check=False
        ).stdout
        active = out.split("Active:")[-1].split("Pending:")[0] if "Active:" in out else ""
        return len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M))

    def model_cache(self) -> dict[str, tuple[int, str]]:
        root = Path(self.tb.shared_dir) / "models" / "tiny-llama"
        return {
            str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    def serving_problems(self) -> list[str]:
        """Empty when the group serves: /health, a chat answer, Ray whole, vLLM after Ray, cache intact."""
        problems = []
        health = self.health()
        if health != 200:
            problems.append(f"/health answered {health}")
        else:
            try:
                text = self.chat()["choices"][0]["message"]["content"]
                if not text:
                    problems.append("the chat completion has no text")
            except OSError as exc:
                problems.append(f"chat completion failed: {exc}")
        alive = self.ray_nodes_alive()
        if alive != 2:
            problems.append(f"Ray lists {alive} active nodes, not 2")
        starts = {(i, u): self.unit_start(i, u) for i, u in ((1, "ray-head"), (2, "ray-worker"), (1, "vllm"))}
        if not all(v.isdigit() and int(v) > 0 for v in starts.values()):
            problems.append(f"a unit is not running: {starts}")
        elif int(starts[(1, "vllm")]) < max(int(starts[(1, "ray-head")]), int(starts[(2, "ray-worker")])):
            problems.append(f"vLLM is older than a Ray unit it depends on: {starts}")
        if self.model_cache() != self.cache:
            problems.append("the model cache changed")
        return problems


@pytest.fixture(scope="module")
def bed(testbed: tb.Testbed) -> Iterator[tb.Testbed]:
    """The session bed (conftest.testbed: brought up once, shared): the faults heal what they break."""
    if not (node_venv() / "bin" / "vllm").exists():
        pytest.fail(f"node venv {node_venv()} missing: build it (multinode-vllm testbed) or set MNV_NODE_VENV")
    RUN.update(testbed=testbed.name, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    t0 = time.monotonic()
    model = Path(testbed.shared_dir) / "models" / "tiny-llama"
    if not (model / "config.json").exists():
        from multinode_vllm.testbed.tinymodel import make_tiny_llama

        make_tiny_llama(model)
    RUN["tiny_model_s"] = round(time.monotonic() - t0, 1)  # the bed is the session's: its time is not here
    try:
        yield testbed
    finally:
        write_results()
        if not os.environ.get("MNV_E2E_KEEP"):
            for i in range(1, len(testbed.nodes) + 1):
                testbed.exec(i, ["systemctl", "stop", "vllm", "ray-head", "ray-worker"], check=False)


@pytest.fixture(scope="module")
def story(bed: tb.Testbed, run_ansible: Callable[..., Any], ansible_env: dict[str, str]) -> FaultStory:
    return FaultStory(bed, run_ansible, ansible_env)


def write_results() -> None:
    if not RESULTS and "bring_up_s" not in RUN:
        return
    RUN["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {**RUN, "faults": RESULTS, "passed": sum(1 for r in RESULTS if r["passed"]), "total": len(RESULTS)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"faults-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    head = f"{'fault':<40} {'reported after':>14} {'rerun':>8} {'result':>7}"
    lines = [head, "-" * len(head)]
    for r in RESULTS:
        lines.append(
            f"{r['fault']:<40} {fmt(r.get('detect_s')):>14} {fmt(r.get('rerun_s')):>8} "
            f"{'pass' if r['passed'] else 'FAIL':>7}"
        )
    lines.append(f"{doc['passed']} of {doc['total']} faults passed; bring-up {fmt(RUN.get('bring_up_s'))}")
    print("\n" + "\n".join(lines) + f"\nwritten to {path}", flush=True)


def fmt(secs: float | None) -> str:
    return "-" if secs is None else f"{secs:.0f} s"


def wait_reported(
    story: FaultStory, rec: dict[str, Any], t_inject: float, reported: Callable[[int, dict[str, Any]], bool]
) -> dict[str, Any]:
    """Run status until it reports the fault (bounded); record when and what it said."""
    runs = 0
    while True:
        rc, status, secs = story.status()
        runs += 1
        say(f"status rc={rc} in {secs} s: healthy={status.get('healthy')} problems={status.get('problems')}")
        if reported(rc, status):
            rec.update(
                detect_s=round(time.monotonic() - t_inject, 1), status_runs=runs, reported=status.get("problems")
            )
            return status
        if time.monotonic() - t_inject > DETECT_WITHIN:
            rec["reported"] = status.get("problems")
            pytest.fail(f"{rec['fault']}: status did not report it within {DETECT_WITHIN} s: {status}")
        time.sleep(3)


def problems_match(status: dict[str, Any], pattern: str) -> bool:
    return status.get("healthy") is False and any(re.search(pattern, p) for p in status.get("problems") or [])


def begin(story: FaultStory, name: str) -> dict[str, Any]:
    """The record of one fault; a group that does not serve first gets a repair run (recorded)."""
    rec: dict[str, Any] = {"fault": name, "passed": False}
    RESULTS.append(rec)
    if "bring_up_s" not in RUN:
        pytest.fail("the cluster never served: see the bring-up test")
    # the previous fault's rerun ended with the same checks, and nothing ran since
    before = [] if RUN.pop("serving_checked", False) else story.serving_problems()
    if before:
        say(f"{name}: not serving before the fault ({before}): one repair run first")
        proc, secs = story.converge(f"{name}: repair run")
        rec["repair_s"] = secs
        if proc.returncode != 0 or story.serving_problems():
            pytest.fail(f"{name}: the group does not serve even after a repair run:\n{proc.stdout[-3000:]}")
    say(f"--- {name}")
    return rec


def converged(story: FaultStory, rec: dict[str, Any], label: str = "rerun") -> subprocess.CompletedProcess[str]:
    proc, secs = story.converge(f"{rec['fault']}: {label}")
    rec["rerun_s"] = round(rec.get("rerun_s", 0) + secs, 1)
    rec["rerun_recap"] = recap(proc.stdout)
    assert proc.returncode == 0, f"{rec['fault']}: the rerun failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}"
    problems = story.serving_problems()
    assert not problems, f"{rec['fault']}: not serving after the rerun: {problems}"
    RUN["serving_checked"] = True  # begin() of the next fault need not check again
    return proc


# ------------------------------------------------------------------------------------------ tests


def test_bring_the_cluster_to_serving(story: FaultStory) -> None:
    proc, secs = story.converge("bring-up (cluster.yml + serve.yml)")
    assert proc.returncode == 0, f"bring-up failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}"
    RUN["bring_up_s"] = secs
    story.cache = story.model_cache()
    assert "config.json" in story.cache and any(k.endswith(".safetensors") for k in story.cache), story.cache
    RUN["model_cache_files"] = len(story.cache)
    problems = story.serving_problems()
    assert not problems, problems
    rc, status, secs = story.status()
    RUN["status_healthy_s"] = secs
    assert rc == 0 and status.get("healthy") is True and status.get("problems") == [], status
    RUN["serving_checked"] = True


def test_fault_1_worker_ray_killed_and_kept_down(story: FaultStory) -> None:
    rec = begin(story, "1 worker Ray killed (kept down)")
    t0 = time.monotonic()
    story.node_sh(2, "systemctl kill --signal=SIGKILL ray-worker; systemctl stop ray-worker")
    worker_ip = story.tb.node(2).ips["bond0"]
    wait_reported(
        story,
        rec,
        t0,
        lambda rc, s: (
            problems_match(s, r"^node2: ray-worker is (inactive|failed)")
            and problems_match(s, rf"^Ray: .*{re.escape(worker_ip)} missing")
        ),
    )
    converged(story, rec)
    assert story.node_sh(2, "systemctl is-active ray-worker", check=False).stdout.strip() == "active"
    rec["passed"] = True


def test_fault_2_vllm_killed(story: FaultStory) -> None:
    rec = begin(story, "2 vLLM killed (SIGKILL main PID)")
    before = story.unit_start(1, "vllm")
    t0 = time.monotonic()
    story.node_sh(1, "kill -9 $(systemctl show -p MainPID --value vllm)")
    wait_reported(story, rec, t0, lambda rc, s: problems_match(s, r"^vLLM: /health answered (?!200)"))
    converged(story, rec)
    assert story.unit_start(1, "vllm") != before
    rec["passed"] = True


def test_fault_3_node_stopped_and_started(story: FaultStory) -> None:
    rec = begin(story, "3 node stopped and started")
    node = story.tb.node(2)
    t0 = time.monotonic()
    subprocess.run(["podman", "stop", "-t", "10", node.container], check=True, capture_output=True)
    wait_reported(
        story,
        rec,
        t0,
        lambda rc, s: rc == 3 and problems_match(s, r"^node2: unreachable$") and problems_match(s, r"^Ray: "),
    )
    t1 = time.monotonic()
    subprocess.run(["podman", "start", node.container], check=True, capture_output=True)
    deadline = time.monotonic() + 90
    while not ssh_ok(node.mgmt_ip, story.tb.ssh_key):
        assert time.monotonic() < deadline, "node2 did not answer SSH again within 90 s"
        time.sleep(1)
    rec["node_back_s"] = round(time.monotonic() - t1, 1)
    addrs = story.node_sh(2, "ip -br -4 addr").stdout
    for ifname, ip in node.ips.items():
        assert re.search(rf"^{ifname}\S*\s+UP\s+{re.escape(ip)}/", addrs, re.M), f"{ifname} {ip} lost:\n{addrs}"
    assert story.node_sh(2, "systemctl is-enabled ray-worker").stdout.strip() == "enabled"
    converged(story, rec)
    rec["passed"] = True


def test_fault_4_head_ray_killed(story: FaultStory) -> None:
    rec = begin(story, "4 head Ray killed (SIGKILL)")
    before = {k: story.unit_start(*k) for k in ((1, "ray-head"), (1, "vllm"))}
    t0 = time.monotonic()
    story.node_sh(1, "systemctl kill --signal=SIGKILL ray-head")

    # systemd restarts the head within 5 s as a new, empty Ray cluster: the worker and vLLM are lost.
    # Status says so while it lasts: Ray incomplete, the head's unit, or vLLM's /health (the loss's
    # consequence). On a loaded machine one status run (about 30 s) can miss all of it: the worker's
    # Ray rejoins (Restart=always) and vLLM restarts on the new cluster (Restart=on-failure). That
    # is accepted only with the evidence: status healthy, and both the head's Ray and vLLM started
    # again after the kill.
    def reported_or_healed(rc: int, s: dict[str, Any]) -> bool:
        if problems_match(s, r"^(Ray: |node1: ray-head is |vLLM: /health answered (?!200))"):
            return True
        restarted = {k: story.unit_start(*k) for k in before}
        healed = s.get("healthy") is True and all(v not in ("", "0", before[k]) for k, v in restarted.items())
        if healed:
            rec["healed_by_itself"] = {f"node{k[0]} {k[1]}": [before[k], v] for k, v in restarted.items()}
        return healed

    wait_reported(story, rec, t0, reported_or_healed)
    converged(story, rec)
    rec["passed"] = True


# ansible-playbook can lose a Ctrl-C: its SIGINT handler raises KeyboardInterrupt, and when that
# lands in a finalizer (logging's _releaseLock around a fork) Python prints "Exception ignored" and
# the play goes on. A user presses Ctrl-C again: the second one kills it (the handler is reset).
INTERRUPT_STEPS = ((signal.SIGINT, 0.3), (signal.SIGINT, 2.0), (signal.SIGKILL, 30.0))  # signal, wait
SETTLE_S = 5  # a worker process may still finish the remote command it had started


@dataclass(frozen=True)
class Interruption:
    """Fault 5: a run changes a setting, so it writes a new unit, and is stopped right after that."""

    phase: str
    node: int
    unit: str
    values: tuple[str, str]  # the setting of the interrupted run, then the one left on disk by hand
    change: Callable[[str], dict[str, Any]]  # the extra vars of the changed setting
    in_unit: str  # how the setting reads in the unit file ({} is the value)
    in_cmdline: str  # and in the running process's command line
    written: str  # the task that converges the unit (writes it and restarts it)


INTERRUPTIONS = [
    Interruption(
        phase="serve",
        node=1,
        unit="vllm",
        values=("3", "2"),
        change=lambda v: {"vllm_serve_max_num_seqs": int(v)},
        in_unit='"--max-num-seqs" "{}"',
        in_cmdline="--max-num-seqs {}",
        written="TASK [multinode.vllm.vllm_serve : Run the vllm unit]",
    ),
    Interruption(
        phase="cluster",
        node=2,
        unit="ray-worker",
        values=("record", "pretty"),
        change=lambda v: {"ray_worker_extra_args": [f"--log-style={v}"]},
        in_unit='"--log-style={}"',
        in_cmdline="--log-style={}",
        written="TASK [multinode.vllm.ray_worker : Run the ray-worker unit]",
    ),
]


def ran_changed(task: str, node: int, out: str) -> bool:
    """ansible-playbook's output has `changed: [nodeN]` in the block of this task (or handler)."""
    blocks = re.finditer(re.escape(task) + r"[^\n]*\n((?:.+\n)*)", out)
    return any(re.search(rf"^changed: \[node{node}\]", m.group(1), re.M) for m in blocks)


def interrupt_after(story: FaultStory, env: dict[str, str], written: str) -> tuple[str, int, str]:
    """Run cluster+serve (story.extra holds the change) and interrupt it right after `written`.

    Ctrl-C first, as a user does; a second Ctrl-C and then a SIGKILL of the process group (the
    terminal closed) while ansible-playbook still runs (INTERRUPT_STEPS). Returns (the task it was
    interrupted at, its exit code, how it was stopped).
    """
    proc = subprocess.Popen(
        [str(VENV_BIN / "ansible-playbook"), *story.playbook_args(*CLUSTER_SERVE)],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: SIGINT to all of it, as Ctrl-C does
    )
    t_start = time.monotonic()
    unit_written = False
    interrupted_at = ""
    stopped_by: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if time.monotonic() - t_start > RERUN_TIMEOUT:
                break
            if written in line:
                unit_written = True
            elif unit_written and line.startswith(("TASK [", "RUNNING HANDLER [")):
                # the unit is written; its restart handler has not run yet
                interrupted_at = line.strip()
                for sig, wait_s in INTERRUPT_STEPS:
                    os.killpg(proc.pid, sig)
                    stopped_by.append(signal.Signals(sig).name)
                    try:
                        proc.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                break
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    say(
        f"interrupted at {interrupted_at!r} after {time.monotonic() - t_start:.0f} s by {'+'.join(stopped_by)}: "
        f"rc={proc.returncode}, its last lines:\n{out[-1500:]}"
    )
    return interrupted_at, proc.returncode, "+".join(stopped_by)


def process_cmdline(story: FaultStory, cut: Interruption) -> str:
    pid = story.node_sh(cut.node, f"systemctl show -p MainPID --value {cut.unit}").stdout.strip()
    return story.node_sh(cut.node, f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout


@pytest.mark.parametrize("cut", INTERRUPTIONS, ids=lambda c: c.phase)
def test_fault_5_play_interrupted_mid_phase(story: FaultStory, ansible_env: dict[str, str], cut: Interruption) -> None:
    rec = begin(story, f"5 play interrupted (SIGINT in {cut.phase})")
    env = {**ansible_env, "PYTHONUNBUFFERED": "1"}
    first, by_hand = cut.values
    story.extra.update(cut.change(first))
    interrupted_at, rc, stopped_by = interrupt_after(story, env, cut.written)
    assert interrupted_at, f"the {cut.phase} phase never reached its unit: nothing was interrupted"
    assert rc != 0, f"ansible-playbook ended 0 after {stopped_by}"
    rec.update(interrupted_at=interrupted_at, interrupted_rc=rc, stopped_by=stopped_by)
    time.sleep(SETTLE_S)
    # The unit is written and its process restarted in the same call: nothing is left half done.
    unit_file = story.node_sh(cut.node, f"cat /etc/systemd/system/{cut.unit}.service").stdout
    assert cut.in_unit.format(first) in unit_file, unit_file
    assert story.node_sh(cut.node, f"systemctl show -p NeedDaemonReload --value {cut.unit}").stdout.strip() == "no"
    assert cut.in_cmdline.format(first) in process_cmdline(story, cut)

    # The window left: the module killed between its write and its restart. Made by hand, as it
    # would be left: the next setting in the unit on disk, the process on the old one.
    t0 = time.monotonic()
    edit = f"s/{cut.in_unit.format(first)}/{cut.in_unit.format(by_hand)}/"
    story.node_sh(cut.node, f"sed -i {shlex.quote(edit)} /etc/systemd/system/{cut.unit}.service")
    reload = story.node_sh(cut.node, f"systemctl show -p NeedDaemonReload --value {cut.unit}").stdout.strip()
    assert reload == "yes", "the unit edited on disk is not newer than the one systemd runs"
    story.extra.update(cut.change(by_hand))
    wait_reported(
        story, rec, t0, lambda rc, s: problems_match(s, rf"^node{cut.node}: the {cut.unit} unit changed on disk")
    )
    rerun = converged(story, rec)
    # the rerun restarts the unit because it changed after it started (multinode.vllm.service_unit)
    assert ran_changed(cut.written.removeprefix("TASK "), cut.node, rerun.stdout), rerun.stdout[-3000:]
    # the reason, as the run shows it (the message may wrap): "<files> changed after <unit> started"
    # (the unit file, and the environment file); or, when systemd restarted the process on its own
    # meanwhile (its Ray group broke), still from the unit it had loaded: "the <unit> unit file
    # changed on disk since systemd loaded it"; or, when the rerun's recovery of a broken group
    # stopped it first (the Ray head restarted: its worker exits), "<unit> started: <unit> was
    # deactivating". Each way the process must end on the unit on disk (checked below).
    u = re.escape(cut.unit)
    why = (
        rf"{u}\s+restarted:\s+(?:[^;']*?changed\s+after\s+{u}\s+started"
        rf"|the\s+{u}\s+unit\s+file\s+changed\s+on\s+disk\s+since\s+systemd\s+loaded\s+it)"
        rf"|{u}\s+started:\s+{u}\s+was\s+(?:deactivating|activating|failed|inactive)"
    )
    shown = "\n".join(line for line in rerun.stdout.splitlines() if re.search(r"started|restarted|changed: ", line))
    assert re.search(why, rerun.stdout), shown
    cmdline = process_cmdline(story, cut)
    assert cut.in_cmdline.format(by_hand) in cmdline, (
        f"{cut.unit} runs the unit of before the interrupted run: {cmdline}"
    )
    assert story.node_sh(cut.node, f"systemctl show -p NeedDaemonReload --value {cut.unit}").stdout.strip() == "no"
    rec["passed"] = True


def test_fault_6_dev_shm_full_on_the_head(story: FaultStory) -> None:
    rec = begin(story, "6 /dev/shm full on the head")
    t0 = time.monotonic()
    story.node_sh(1, f"fallocate -l $(df --block-size=1 --output=avail /dev/shm | tail -1) {SHM_FILL}")
    free = story.node_sh(1, "df --block-size=1 --output=avail /dev/shm | tail -1").stdout.strip()
    say(f"/dev/shm on node1: {free} bytes free")
    try:
        wait_reported(story, rec, t0, lambda rc, s: problems_match(s, r"^node1: /dev/shm has \d+ MiB free"))
        # The product's answer: the rerun stops before anything changes, naming /dev/shm and the fix.
        before = {(i, u): story.unit_start(i, u) for i, u in ((1, "ray-head"), (2, "ray-worker"), (1, "vllm"))}
        proc, secs = story.converge("6: rerun with /dev/shm full")
        rec["refused_rerun_s"] = secs
        assert proc.returncode != 0, "the rerun went on with a full /dev/shm"
        assert "/dev/shm on node1 has 0 MiB free" in proc.stdout and "Nothing was changed" in proc.stdout, proc.stdout[
            -3000:
        ]
        assert recap(proc.stdout)["node1"]["changed"] == 0, recap(proc.stdout)
        after = {k: story.unit_start(*k) for k in before}
        assert after == before, f"a unit restarted although the run stopped: {before} -> {after}"
    finally:
        # the operator's fix, as the message says
        story.node_sh(1, f"rm -f {SHM_FILL}")
    converged(story, rec, "rerun after removing the file")
    rec["rerun_s"] = round(rec["rerun_s"] + rec["refused_rerun_s"], 1)
    rec["passed"] = True
