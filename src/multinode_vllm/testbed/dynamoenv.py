"""The Dynamo venv of the Dynamo test bed (``--layout dynamo``), built on the host.

Like the node venv (``nodeenv``): made with Debian's ``/usr/bin/python3`` and bind-mounted at the
same path in every node (``/var/tmp/multinode-vllm/venvs/dynamo``), since the nodes have no internet.
It holds what the dynamo_serve role installs on real nodes: the role's lock
``roles/dynamo_serve/files/dynamo-requirements.txt`` (ai-dynamo 1.6.1, ai-dynamo-runtime 1.6.1 and
ai-dynamo's dependencies), installed ``--no-deps`` because ai-dynamo's dependency aisimulate is a
placeholder that pip cannot install from PyPI. About 700 MB, a minute.

Idempotent: ``<venv>/.multinode-vllm-stamp`` holds a hash of the lock and the interpreter.

``python -m multinode_vllm.testbed.dynamoenv [--rebuild] [PATH]``
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import sys
import time
from pathlib import Path

from multinode_vllm import PROJECT_DIR
from multinode_vllm.testbed.nodeenv import DEFAULT_PYTHON, STAMP, _Progress, _run, stamped, start_venv
from multinode_vllm.testbed.podman import TestbedError
from multinode_vllm.testbed.state import venvs_dir

LOCK = Path(PROJECT_DIR) / "roles" / "dynamo_serve" / "files" / "dynamo-requirements.txt"
#: The check after the install: the frontend and the mocker engine import (the runtime's Rust core).
CHECK = "import dynamo._core, dynamo.frontend, dynamo.mocker, importlib.metadata as m; print(m.version('ai-dynamo'))"


def default_venv() -> Path:
    """``/var/tmp/multinode-vllm/venvs/dynamo`` (``MNV_CACHE_DIR`` moves the root)."""
    return venvs_dir() / "dynamo"


def lock_version() -> str:
    for line in LOCK.read_text().splitlines():
        if line.startswith("ai-dynamo=="):
            return line.split("==", 1)[1].strip()
    raise TestbedError(f"{LOCK} pins no ai-dynamo")


def spec_hash(python: str = DEFAULT_PYTHON) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([python, "no-deps"]).encode())
    h.update(LOCK.read_bytes())
    return h.hexdigest()[:16]


def is_current(path: Path | None = None, *, python: str = DEFAULT_PYTHON) -> bool:
    return stamped(path or default_venv(), spec_hash(python))


def build_dynamo_venv(
    path: Path | None = None, *, python: str = DEFAULT_PYTHON, rebuild: bool = False, quiet: bool = False
) -> Path:
    """Build (or reuse) the Dynamo venv at ``path``; return ``path``. Raises ``TestbedError``."""
    path = Path(path) if path is not None else default_venv()
    progress = _Progress(quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        want = spec_hash(python)
        if not rebuild and is_current(path, python=python):
            progress.say(f"{path} is current (spec {want}); reused")
            return path
        t0 = time.monotonic()
        vpy, pip, _created = start_venv(path, python, rebuild=rebuild, progress=progress)
        with progress.step("pip", f"pip install --no-deps -r {LOCK.name} (about a minute, 700 MB)"):
            _run([*pip, "install", "-q", "--no-deps", "-r", str(LOCK)], "pip install the Dynamo lock")
        with progress.step("check", "importing dynamo.frontend and dynamo.mocker"):
            out = _run([str(vpy), "-c", CHECK], "import dynamo", timeout=300)
            got = out.strip().splitlines()[-1] if out.strip() else ""
            if got != lock_version():
                raise TestbedError(f"Dynamo venv check: expected ai-dynamo {lock_version()}, got {got!r}")
        (path / STAMP).write_text(want + "\n")
        (path / "multinode-vllm-build.json").write_text(
            json.dumps({"lock": str(LOCK), "hash": want, "seconds": round(time.monotonic() - t0, 1)}, indent=2) + "\n"
        )
        progress.say(f"{path} ready (spec {want})")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multinode_vllm.testbed.dynamoenv", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("path", nargs="?", type=Path, default=None)
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(build_dynamo_venv(args.path, python=args.python, rebuild=args.rebuild))
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
