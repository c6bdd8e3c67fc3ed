"""The bad-input suite, fast: every case of tests/bad_inputs.py marked fast, through the real site.yml.

Validate cases run against a generated inventory whose addresses are never dialled; the node
cases run with the controller itself as both nodes (local connection; the checks they reach only
read). The playbooks are the two checking phases, playbooks/validate.yml and playbooks/preflight.yml:
were a case to get through both, nothing would be started. Each outcome is recorded in
tests/output/bad-input-fast.json (docs/bad-input.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import CASES, DOC, FAST, FAST_REPORT, Case, V, apply, cases, fast_inventory, local_inventory, record
from bad_inputs import run_case as run

PLAYBOOKS = ("playbooks/validate.yml", "playbooks/preflight.yml")


def test_the_suite_has_at_least_40_distinct_cases() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(cases(FAST)) >= 40, len(cases(FAST))
    # every case names a variable and a fix, and says where it stops
    for c in CASES:
        assert c.var and c.fix and c.task and c.phase in ("validate", "validate nodes", "preflight"), c


def test_the_bases_are_valid(tmp_path: Path) -> None:
    """The unchanged fast inventory passes validate: each case fails because of its own change."""
    out = run(fast_inventory().write(tmp_path / "fast"), "playbooks/validate.yml", "--tags", "validate")
    assert out.rc == 0, (out.task, out.msg, out.stderr[-2000:])
    assert "TP 8 x PP 2 on 2 nodes x 8 GPUs" in out.stdout


def test_the_local_base_gets_past_reach_and_fabric(tmp_path: Path) -> None:
    """One local node passes the reach and fabric checks and stops only at the pynvml safety net."""
    inv = local_inventory()
    inv.hosts("ray_workers").clear()
    inv.set(validate_ignore_plan=True)  # 405B does not fit one node; not what this test is about
    out = run(inv.write(tmp_path / "local1"), *PLAYBOOKS)
    assert out.rc != 0
    assert out.phase == "preflight" and "lacks pynvml" in out.task, (out.task, out.msg)


# The cases are independent ansible-playbook runs that mostly wait on Python start-up and SSH-less
# templating: they run WORKERS at a time, once, before the first case's test reads its outcome.
WORKERS = int(os.environ.get("MNV_BAD_INPUT_WORKERS", "3"))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad-input")

    def one(case: Case) -> Any:
        base = fast_inventory() if case.phase == V else local_inventory()
        return run(apply(case, base).write(root / case.id), *PLAYBOOKS)

    selected = cases(FAST)
    with ThreadPoolExecutor(max_workers=max(1, WORKERS)) as pool:
        return dict(zip([c.id for c in selected], pool.map(one, selected), strict=True))


@pytest.mark.parametrize("case", cases(FAST), ids=lambda c: c.id)
def test_bad_input_stops_early_naming_the_variable_and_the_fix(outcomes: dict[str, Any], case: Case) -> None:
    out = outcomes[case.id]
    record(FAST_REPORT, case, out)
    problems = out.problems(case)
    assert not problems, f"{case.id}: {problems}\ntask: {out.task}\nmsg: {out.msg}\nstderr: {out.stderr[-2000:]}"


def test_the_document_lists_every_case() -> None:
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/bad-input.md lacks {missing}: run python tests/bad_inputs.py doc"
