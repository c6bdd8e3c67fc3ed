#!/usr/bin/env python3
"""CPU-seconds of each test bed over a test run, from the node containers' cgroup-v1 cpuacct.

``scripts/test all`` runs it in the background: every few seconds it reads
``/sys/fs/cgroup/cpuacct/libpod_parent/libpod-<id>/cpuacct.usage`` of every container and keeps the
last value seen per container (a container's cgroup goes with it, so a bed taken down keeps what it
used up to the last sample: at most ``--every`` seconds short). On SIGTERM or SIGINT it prints one
line per bed (containers named ``<bed>-node<N>``; others under their own name), highest first.

No cgroup v1 cpuacct (another machine): it prints nothing and exits 0.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpuacct/libpod_parent")


def container_name(cid: str) -> str:
    try:
        out = subprocess.run(
            ["podman", "inspect", "--format", "{{.Name}}", cid], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out or cid[:12]


def bed_of(name: str) -> str:
    return re.sub(r"-node\d+$", "", name)


def sample(usage: dict[str, int], names: dict[str, str]) -> None:
    for d in ROOT.glob("libpod-*"):
        cid = d.name.removeprefix("libpod-").removesuffix(".scope")
        try:
            ns = int((d / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            continue  # removed meanwhile
        if cid not in names:
            names[cid] = container_name(cid)
        usage[cid] = max(usage.get(cid, 0), ns)


def report(usage: dict[str, int], names: dict[str, str]) -> list[str]:
    beds: dict[str, float] = {}
    nodes: dict[str, int] = {}
    for cid, ns in usage.items():
        bed = bed_of(names.get(cid, cid[:12]))
        beds[bed] = beds.get(bed, 0.0) + ns / 1e9
        nodes[bed] = nodes.get(bed, 0) + 1
    return [
        f"{secs:7.0f} CPU-s  {bed} ({nodes[bed]} container{'s' if nodes[bed] > 1 else ''})"
        for bed, secs in sorted(beds.items(), key=lambda kv: -kv[1])
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples (default 5)")
    args = ap.parse_args(argv)
    if not ROOT.is_dir():
        return 0
    usage: dict[str, int] = {}
    names: dict[str, str] = {}
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        sample(usage, names)
        end = time.monotonic() + args.every
        while not stop and time.monotonic() < end:
            time.sleep(0.2)
    sample(usage, names)
    for line in report(usage, names):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
