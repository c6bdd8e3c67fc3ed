"""Shared by the e2e modules that own a test bed for one story."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.tinymodel import make_tiny_llama

RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@contextmanager
def fresh_bed(spec: tb.TestbedSpec, model: str = "tiny-llama") -> Iterator[tb.Testbed]:
    """The test bed of ``spec`` from bare nodes (taken down first, even after an interrupted session),
    with the tiny model in its shared directory; taken down at the end."""
    tb.down(spec.name)
    bed = tb.up(spec)  # through the package: tests/e2e/conftest.py counts the beds brought up
    try:
        make_tiny_llama(Path(bed.shared_dir) / "models" / model, quiet=True)
        yield bed
    finally:
        tb.down(spec.name)


def play(
    run_ansible: Callable[..., Any],
    bed: tb.Testbed,
    *playbooks: str,
    phase: str,
    phases: dict[str, float],
    label: str,
    extra: dict[str, Any] | None = None,
    ok: bool = True,
    timeout: float = 600,
) -> tuple[dict[str, int], str]:
    """ansible-playbook on the bed's inventory, timed into ``phases[phase]`` (printed as ``[label phase]``);
    it must end 0 (``ok=False``: it must fail). Returns changed= per host from the recap, and the output."""
    t0 = time.monotonic()
    args = ["-i", str(bed.inventory), *playbooks] + (["-e", json.dumps(extra)] if extra else [])
    proc = run_ansible("ansible-playbook", *args, timeout=timeout)
    phases[phase] = round(time.monotonic() - t0, 1)
    print(f"\n[{label} phase] {phase}: {phases[phase]} s")
    if ok:
        assert proc.returncode == 0, f"{phase}: rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    else:
        assert proc.returncode != 0, f"{phase}: expected a failure\n{proc.stdout[-4000:]}"
    return {m[0]: int(m[2]) for m in RECAP.findall(proc.stdout)}, proc.stdout
