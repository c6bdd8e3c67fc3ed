"""Shared by the e2e modules that own a test bed for one story."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from multinode_vllm import testbed as tb
from multinode_vllm.testbed.tinymodel import make_tiny_llama


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
