"""The bad-input suite on the simulated cluster: every case stops early and no node changes.

A test bed of its own (``mnv-bad``, 2 nodes, bond0; light: nothing is served). Every case of
tests/bad_inputs.py marked for the test bed changes the test bed's inventory and runs ``site.yml``
(``--skip-tags serve,bench``: were a case to get through every check, Ray would start and the
fingerprint would show it, but vLLM never would). Before the first case and after each one, a
fingerprint of every node is taken with ``podman exec`` (not through Ansible): the files changed
under /etc, /opt, /srv, /usr, /var/tmp, /var/lib/dpkg and /root since the start, the systemd unit
files and the ray/vllm units, the Ray and vLLM processes, the listening TCP ports, the nftables
rules and the containers; plus the files changed in the shared directory. Each case must leave
them exactly as they were. Left out: Ansible's own temporary directory /root/.ansible (and with it
the modification time of /root), which the podman connection of the duplicate-host case creates.
Outcomes and times go to tests/output/bad-input-e2e.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from bad_inputs import E2E_REPORT, FAST, TESTBED, Case, Inv, apply, cases, record, run_case

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.spec import existing_subnets, find_clashes, plan_networks
from multinode_vllm.testbed.state import load_state

pytestmark = pytest.mark.e2e

NAME = "mnv-bad"
RUN = time.strftime("%Y-%m-%dT%H:%M:%S")
# Fed on stdin, so that its text (which names ray and vllm) is not in any process's arguments.
FINGERPRINT = r"""
T="$1"
echo "## files changed since the start"
# (-xdev: not into the host's directories mounted into the node, such as the venvs; and not their mount
# points either, whose times change when the host adds a sibling, e.g. the Dynamo venv built meanwhile)
{ find /etc /opt /srv /usr /var/tmp /var/lib/dpkg -xdev -newermt "@$T"
  find /root -xdev -mindepth 1 -newermt "@$T" ! -path '/root/.ansible' ! -path '/root/.ansible/*'; } 2>/dev/null \
  | awk 'NR == FNR { mounted[$5] = 1; next } !($0 in mounted)' /proc/self/mountinfo - | sort
echo "## systemd unit directories"
find /etc/systemd/system /run/systemd/system -printf '%y %p %l %s\n' 2>/dev/null | sort
echo "## unit files"
systemctl list-unit-files --no-legend --no-pager 2>/dev/null | sort
echo "## ray, vllm and multinode units"
systemctl list-units --all --no-legend --no-pager --plain 'ray*' 'vllm*' 'multinode*' 2>/dev/null | sort
echo "## ray and vllm processes"
ps -eo args= | grep -E '[r]ay|[v]llm' | sort
echo "## listening TCP ports"
ss -ltnH 2>/dev/null | awk '{print $4}' | sort -u
echo "## nftables"
command -v nft >/dev/null 2>&1 && nft list ruleset 2>/dev/null
echo "## containers"
command -v docker >/dev/null 2>&1 && docker ps -a --format '{{.Names}} {{.Image}} {{.State}}' 2>/dev/null
echo "## end"
"""


@dataclass
class Fingerprints:
    start: int  # epoch seconds: "changed since" for find
    nodes: dict[str, str]
    shared: str


def take(bed: tb.Testbed, start: int) -> Fingerprints:
    nodes = {}
    for node in bed.nodes:
        proc = tb.exec(bed.name, node.index, ["sh", "-s", "--", str(start)], input=FINGERPRINT, check=False)
        assert "## end" in proc.stdout, f"fingerprint of {node.container} failed: {proc.stderr}"
        nodes[node.hostname] = proc.stdout
    found = subprocess.run(
        ["find", str(bed.shared_dir), "-newermt", f"@{start}"], capture_output=True, text=True, check=False
    )
    return Fingerprints(start, nodes, "\n".join(sorted(found.stdout.split())))


def differences(before: Fingerprints, after: Fingerprints) -> list[str]:
    """The lines that appeared or disappeared, per node ("node1 + /etc/foo")."""
    out = []
    for host, text in before.nodes.items():
        old, new = text.splitlines(), after.nodes[host].splitlines()
        out += [f"{host} + {line}" for line in new if line not in old]
        out += [f"{host} - {line}" for line in old if line not in new]
    old_s, new_s = before.shared.splitlines(), after.shared.splitlines()
    out += [f"shared + {line}" for line in new_s if line not in old_s]
    return out


def free_index() -> int:
    """This test bed's subnet index when it is up, else one that no network or route here uses (the
    name's hashed default can collide with another engineer's test bed)."""
    state = load_state(NAME)
    if state is not None:
        return int(state["params"]["subnet_index"])
    networks = json.loads(
        subprocess.run(
            ["podman", "network", "ls", "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
        or "[]"
    )
    routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True, text=True, check=True).stdout)
    taken = existing_subnets(networks, routes)
    for index in range(210, 250):
        if not find_clashes(plan_networks(tb.TestbedSpec(name=NAME, subnet_index=index)), taken):
            return index
    pytest.fail("no free 10.I.0.0/16 for the test bed in 10.210..10.249")


@pytest.fixture(scope="module")
def bed(node_venv: Path) -> Iterator[tb.Testbed]:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run scripts/bootstrap (or testbed up --install-deps)")
    spec = tb.TestbedSpec(name=NAME, nodes=2, layout="bond0", subnet_index=free_index(), local_inventory=False)
    started = time.monotonic()
    bed = tb.up(spec)
    print(f"\n{NAME}: up in {time.monotonic() - started:.1f} s")
    try:
        yield bed
    finally:
        if not os.environ.get("MNV_E2E_KEEP"):  # keep it for debugging: MNV_E2E_KEEP=1
            tb.down(NAME)


@pytest.fixture(scope="module")
def base(bed: tb.Testbed) -> Inv:
    return Inv(yaml.safe_load((bed.inventory / "hosts.yml").read_text()), kind=TESTBED, testbed_name=bed.name)


@pytest.fixture(scope="module")
def baseline(bed: tb.Testbed) -> Iterator[Fingerprints]:
    start = int(tb.exec(bed.name, 1, ["date", "+%s"]).stdout.strip())
    time.sleep(1.1)  # a file written in the start's second counts as changed
    yield take(bed, start)
    # the count and time of this run's cases (the report keeps earlier runs' other cases too)
    done = (
        [v for v in json.loads(E2E_REPORT.read_text()).values() if v.get("run") == RUN] if E2E_REPORT.exists() else []
    )
    passed = sum(1 for v in done if not v["problems"] and v["unchanged"])
    seconds = sum(v["seconds"] for v in done)
    print(f"\nbad input on {NAME}: {passed} of {len(done)} cases passed, {seconds:.1f} s of ansible-playbook")


def group_vars(bed: tb.Testbed) -> Path:
    return (bed.inventory / "group_vars").resolve()


def test_the_unchanged_testbed_passes_the_checks_and_changes_nothing(
    bed: tb.Testbed, base: Inv, baseline: Fingerprints, tmp_path: Path
) -> None:
    """The control: the test bed's own inventory passes validate and preflight, and the
    fingerprint sees no change, so a change seen after a case is the case's doing."""
    inv = base.write(tmp_path / "base", group_vars(bed))
    out = run_case(inv, "playbooks/validate.yml", "playbooks/preflight.yml")
    assert out.rc == 0, (out.task, out.msg, out.stderr[-2000:])
    assert differences(baseline, take(bed, baseline.start)) == []


def e2e_cases() -> list[Case]:
    """Every case only the test bed can show, and every fourth of the others (all of them with
    MNV_BAD_INPUT_ALL=1): the others also run in the fast suite, and all of them stop in validate,
    on the controller, before any node is contacted; a sample keeps `make test` within CI's time."""
    every = cases(TESTBED)
    if os.environ.get("MNV_BAD_INPUT_ALL", "") in ("1", "true", "yes"):
        return every
    both = [c for c in every if FAST in c.where]
    return [c for c in every if FAST not in c.where] + both[::4]


@pytest.mark.parametrize("case", e2e_cases(), ids=lambda c: c.id)
def test_bad_input_stops_early_and_changes_no_node(
    bed: tb.Testbed, base: Inv, baseline: Fingerprints, tmp_path: Path, case: Case
) -> None:
    inv = apply(case, base).write(tmp_path / case.id, group_vars(bed))
    out = run_case(inv, "site.yml", "--skip-tags", "serve,bench", timeout=600)
    changed = differences(baseline, take(bed, baseline.start))
    record(E2E_REPORT, case, out, unchanged=not changed, changed=changed[:20], run=RUN)
    problems = out.problems(case)
    assert not problems, f"{case.id}: {problems}\ntask: {out.task}\nmsg: {out.msg}\nstderr: {out.stderr[-2000:]}"
    assert not changed, f"{case.id} changed the nodes: {changed[:40]}"
