"""Shared by the e2e modules that own a test bed for one story."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb
from multinode_vllm.testbed.image import IMAGE
from multinode_vllm.testbed.podman import podman
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


def cli_status(
    env: dict[str, str], inventory: Path | str | None = None, extra: dict[str, Any] | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """`multinode-vllm status --json` on ``inventory`` (none: the embedded default, the local test bed):
    the process and the ``multinode_status`` that the run exported; None when it printed no JSON."""
    argv = [sys.executable, "-m", "multinode_vllm", "status", "--json"]
    argv += ["-i", str(inventory)] if inventory else []
    argv += ["-e", json.dumps(extra)] if extra else []
    proc = subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc, None
    exported = (doc.get("result") or doc).get("exported") or {}
    return proc, exported.get("multinode_status") or {}


@contextmanager
def outsider(bed: tb.Testbed, name: str) -> Iterator[tuple[str, str]]:
    """A container on the bed's management and fabric networks (address .250 on each) that is no
    cluster member (the firewall's members are the nodes' addresses), for probes from outside;
    removed at the end. Yields its (management, fabric) addresses; ``podman exec -i NAME ...`` runs in it."""
    mgmt = next(n for n in bed.networks if n.interface == "eth0")
    fabric = next(n for n in bed.networks if n.interface == "bond0")
    ips = (mgmt.subnet.rsplit(".", 1)[0] + ".250", fabric.subnet.rsplit(".", 1)[0] + ".250")
    podman("rm", "-f", "-t", "0", name, check=False)
    podman(
        "run", "-d", "--rm", "--name", name,
        "--network", f"{mgmt.name}:ip={ips[0]}",
        "--network", f"{fabric.name}:ip={ips[1]}",
        IMAGE, "sleep", "infinity",
    )  # fmt: skip
    try:
        yield ips
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def default_bed_serving(timeout: float = 10) -> tuple[str, str | None] | None:
    """The local test bed's (mnv, the CLI's embedded default) base URL and API key when its head
    answers /health with 200 now; None when it is not up or not serving (then a test runs `up`).

    The modules on mnv run one after the other in one stream (test_up_default, then test_bench and
    test_data_parallel): the later ones reuse what serves instead of converging the default again."""
    from multinode_vllm.commands.bench import api_key_for, endpoint_via_mgmt, head_host, inventory_vars

    inventory = PROJECT_DIR / "inventories" / "local"
    if not (inventory / "hosts.yml").exists():  # written by `testbed up`, removed by `testbed down`
        return None
    try:
        hv = inventory_vars(inventory, head_host(inventory_vars(inventory)))
    except (subprocess.CalledProcessError, ValueError, RuntimeError):
        return None
    url = endpoint_via_mgmt(None, str(hv.get("ansible_host", "")))
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            if resp.status != 200:
                return None
    except OSError:
        return None
    return url, api_key_for(inventory, hv)
