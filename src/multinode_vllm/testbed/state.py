"""Where the test bed keeps its files, and the per-test-bed state record.

Everything lives under ``/var/tmp/multinode-vllm/`` (``MNV_CACHE_DIR`` overrides it): the image
build record, the node venvs (mounted read-only in every node at the same path) and one
directory per test bed with its SSH key, its private inventory and ``state.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Label on every podman object a test bed creates; the value is the test bed's name.
LABEL = "multinode-vllm.testbed"
#: Label holding the node index (1-based) on node containers.
NODE_LABEL = "multinode-vllm.node"


def cache_dir() -> Path:
    return Path(os.environ.get("MNV_CACHE_DIR", "/var/tmp/multinode-vllm"))


def venvs_dir() -> Path:
    """Node venvs built on the host; mounted read-only at the same path in every node."""
    return cache_dir() / "venvs"


def image_dir() -> Path:
    return cache_dir() / "image"


def testbeds_dir() -> Path:
    return cache_dir() / "testbeds"


def state_dir(name: str) -> Path:
    return testbeds_dir() / name


def state_file(name: str) -> Path:
    return state_dir(name) / "state.json"


def load_state(name: str) -> dict[str, Any] | None:
    path = state_file(name)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def save_state(name: str, data: dict[str, Any]) -> Path:
    path = state_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


@dataclass
class Steps:
    """Progress lines on stderr: ``[testbed mnv] step ... (elapsed)``."""

    name: str
    quiet: bool = False
    started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def say(self, msg: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[testbed {self.name}] {elapsed:6.1f}s {msg}", file=sys.stderr, flush=True)

    def mark(self, step: str) -> float:
        """Record the time since the previous mark under ``step``; return it."""
        now = time.monotonic()
        took = now - self._last
        self._last = now
        self.timings[step] = round(took, 2)
        return took
