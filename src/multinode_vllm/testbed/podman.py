"""Thin helpers around the host tools: podman, ssh, apt-get (argument lists, never a shell)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any


class TestbedError(RuntimeError):
    """A test bed operation failed; the message says what and how to fix it."""

    __test__ = False  # not a pytest test class


class UsageError(TestbedError, ValueError):
    """Bad parameters (a spec that cannot work, a subnet clash): nothing was changed."""


#: Host tools the test bed needs and the Debian package that provides each.
REQUIRED_TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "ssh": "openssh-client"}


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 300,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one command; on failure raise TestbedError with its stderr."""
    data = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            list(argv),
            input=data,
            text=True,
            capture_output=capture,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise TestbedError(f"{argv[0]}: command not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()
        raise TestbedError(f"{' '.join(argv)} failed (exit {proc.returncode}): {err}")
    return proc


def podman(*args: str, check: bool = True, input: str | None = None, timeout: float | None = 300) -> str:
    return run(["podman", *args], check=check, input=input, timeout=timeout).stdout


def podman_json(*args: str) -> Any:
    out = podman(*args).strip()
    return json.loads(out) if out else []


def missing_tools() -> dict[str, str]:
    """Tool -> Debian package, for every required tool not on PATH."""
    return {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None}


def ensure_tools(install_deps: bool) -> list[str]:
    """Check the host tools; with ``install_deps`` apt-get install the missing ones.

    Returns the packages installed. Raises TestbedError naming the packages and the flag.
    """
    if install_deps:
        write_containers_conf()
    missing = missing_tools()
    if not missing:
        return []
    pkgs = sorted(set(missing.values()))
    if not install_deps:
        raise TestbedError(
            f"missing host tools: {', '.join(sorted(missing))} "
            f"(Debian packages: {' '.join(pkgs)}). Install them with "
            f"'apt-get install -y {' '.join(pkgs)}' or rerun with --install-deps "
            "(or run scripts/bootstrap)."
        )
    if os.geteuid() != 0:
        raise TestbedError(f"--install-deps needs root to apt-get install {' '.join(pkgs)}")
    env_argv = ["env", "DEBIAN_FRONTEND=noninteractive"]
    run([*env_argv, "apt-get", "update", "-qq"], timeout=600)
    run([*env_argv, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs], timeout=900)
    still = missing_tools()
    if still:
        raise TestbedError(f"still missing after apt-get install: {', '.join(sorted(still))}")
    return pkgs


CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
"""


def write_containers_conf(path: str = "/etc/containers/containers.conf") -> bool:
    """Write the podman settings cgroup-v1 hosts need (runc, explicit ulimits) if there is none.

    An existing file is left alone (it may be deliberate); returns True when written.
    """
    if os.path.exists(path) or os.geteuid() != 0:
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(CONTAINERS_CONF)
    return True


def tar_pipe(
    src: str | os.PathLike[str], members: Sequence[str], into: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    """``tar -c members`` (numeric owners, from ``src``) piped into the command ``into``.

    Returns the receiving command's result; a failing tar shows as a non-zero ``returncode``
    there too (its own code is folded in when the receiver succeeded).
    """
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(src), "-c", *members], stdout=subprocess.PIPE)
    try:
        proc = subprocess.run(list(into), stdin=tar.stdout, capture_output=True, text=True, check=False)
    finally:
        if tar.stdout:
            tar.stdout.close()
        tar_rc = tar.wait()
    if proc.returncode == 0 and tar_rc != 0:
        proc.returncode = tar_rc
        proc.stderr = f"tar exited with {tar_rc}. {proc.stderr}"
    return proc
