#!/usr/bin/env python3
"""What the automation costs: `up` wall time against the same Ray + vLLM started by hand.

On the local test bed (inventories/local, started by `multinode-vllm up` or `testbed up`):

1. teardown, then `site.yml` through the runner API: first-run time (cluster from stopped);
2. `site.yml` again: rerun time (everything already in place: the idempotent path);
3. the same Ray head, Ray workers and `vllm serve` (the commands and env files site.yml deployed,
   read from the units) started by hand over ssh after stopping the units, timed until a chat
   completion returns text;
4. teardown.

Needs the native runtime (the test bed's): the by-hand commands come from the systemd units.

Writes benchmarks/results/overhead-<UTC>.json with the three times and the ratios
``first / by_hand`` and ``rerun / first``.

    .venv/bin/python benchmarks/overhead.py [-i inventories/local] [--skip-hand]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.error
from datetime import UTC, datetime
from typing import Any

from multinode_vllm import PROJECT_DIR, RunOptions, run
from multinode_vllm.commands.bench import Endpoint, chat_once, head_host, inventory_vars

RESULTS = PROJECT_DIR / "benchmarks" / "results"


def timed_run(inventory: str, playbook: str, **kw: Any) -> tuple[float, dict[str, Any]]:
    t = time.monotonic()
    result = run(RunOptions(inventory=inventory, playbook=playbook, **kw)).to_dict()
    if result.get("status") != "successful":
        raise SystemExit(f"overhead: {playbook} did not succeed ({result.get('status')}): {result.get('failures')}")
    return time.monotonic() - t, result


def ssh_argv(hv: dict[str, Any], host: str) -> list[str]:
    """ssh to a node the way the inventory says Ansible does."""
    argv = [
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
    ]
    if hv.get("ansible_ssh_private_key_file"):
        argv += ["-i", str(hv["ansible_ssh_private_key_file"])]
    if hv.get("ansible_port"):
        argv += ["-p", str(hv["ansible_port"])]
    user = hv.get("ansible_user") or "root"
    argv.append(f"{user}@{hv.get('ansible_host') or host}")
    return argv


def sh(hv: dict[str, Any], host: str, command: str, timeout: float = 120) -> str:
    out = subprocess.run([*ssh_argv(hv, host), command], capture_output=True, text=True, timeout=timeout, check=True)
    return out.stdout


def exec_start(unit_text: str) -> tuple[list[str], str | None]:
    """(argv, EnvironmentFile) of a unit as `systemctl cat` prints it (systemd quoting undone)."""
    argv: list[str] = []
    env_file = None
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            argv = [a.replace("$$", "$").replace("%%", "%") for a in shlex.split(line[len("ExecStart=") :])]
        elif line.startswith("EnvironmentFile="):
            env_file = line.split("=", 1)[1].lstrip("-")
    if not argv:
        raise SystemExit("overhead: the unit has no ExecStart (did site.yml run with the native runtime?)")
    return argv, env_file


def by_hand_command(argv: list[str], env_file: str | None, log: str) -> str:
    """The unit's command as someone types it over ssh: its env file sourced, in the background
    (`ray start` without --block returns once the node runs; vllm serve under nohup)."""
    args = [a for a in argv if a != "--block"]
    source = f"set -a; . {shlex.quote(env_file)}; set +a; " if env_file else ""
    run = " ".join(shlex.quote(a) for a in args)
    if args[0].endswith("/ray"):
        return f"{source}{run} >{log} 2>&1"
    return f"{source}nohup {run} >{log} 2>&1 </dev/null & echo $!"


def env_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            return shlex.split(line.split("=", 1)[1])[0] if line.split("=", 1)[1] else ""
    return None


def by_hand(inventory: str, timeout: float = 600) -> float:
    """The same Ray head, Ray workers and vllm serve, typed over ssh as the seed guides do.

    The commands are the ones site.yml deployed (read from the units and their env files, so both
    runs start exactly the same processes); the units are stopped first and left stopped.
    """
    listing = inventory_vars(inventory)
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    head = head_host(listing)
    workers = list((listing.get("ray_workers") or {}).get("hosts") or [])
    hv = hostvars[head]
    head_cmd = exec_start(sh(hv, head, "systemctl cat ray-head"))
    vllm_argv, vllm_env = exec_start(sh(hv, head, "systemctl cat vllm"))
    worker_cmds = {w: exec_start(sh(hostvars[w], w, "systemctl cat ray-worker")) for w in workers}
    env_text = sh(hv, head, f"cat {shlex.quote(vllm_env)}") if vllm_env else ""
    served = vllm_argv[vllm_argv.index("--served-model-name") + 1] if "--served-model-name" in vllm_argv else None
    port = vllm_argv[vllm_argv.index("--port") + 1] if "--port" in vllm_argv else "8000"
    ep = Endpoint(
        f"http://{hv.get('ansible_host') or head}:{port}", api_key=env_value(env_text, "VLLM_API_KEY"), model=served
    )
    sh(hv, head, "systemctl stop vllm", timeout=120)
    for w in workers:
        sh(hostvars[w], w, "systemctl stop ray-worker", timeout=120)
    sh(hv, head, "systemctl stop ray-head", timeout=120)

    t = time.monotonic()
    sh(hv, head, by_hand_command(*head_cmd, "/tmp/overhead-ray-head.log"), timeout=180)
    for w, cmd in worker_cmds.items():
        sh(hostvars[w], w, by_hand_command(*cmd, "/tmp/overhead-ray-worker.log"), timeout=180)
    pid = sh(hv, head, by_hand_command(vllm_argv, vllm_env, "/tmp/overhead-vllm.log")).strip()
    deadline = time.monotonic() + timeout
    while True:
        try:
            chat_once(ep, "hello", max_tokens=4, timeout=30)
            break
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            if time.monotonic() > deadline:
                raise SystemExit("overhead: vllm started by hand never answered (/tmp/overhead-vllm.log)") from None
            time.sleep(1)
    elapsed = time.monotonic() - t
    ray = head_cmd[0][0]
    sh(hv, head, f"kill {pid}; sleep 3; {ray} stop --force", timeout=120)
    for w in workers:
        sh(hostvars[w], w, f"{ray} stop --force", timeout=120)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--inventory", default=str(PROJECT_DIR / "inventories" / "local"))
    p.add_argument("--skip-hand", action="store_true", help="only first-run and rerun times")
    args = p.parse_args(argv)
    doc: dict[str, Any] = {"inventory": args.inventory, "date": datetime.now(UTC).isoformat()}
    timed_run(args.inventory, "playbooks/teardown.yml")
    doc["first_s"], doc["first_run"] = timed_run(args.inventory, "site.yml")
    doc["rerun_s"], doc["rerun_run"] = timed_run(args.inventory, "site.yml")
    doc["rerun_changed"] = sum(h["changed"] for h in doc["rerun_run"]["hosts"].values())
    doc["rerun_over_first"] = round(doc["rerun_s"] / doc["first_s"], 3)
    if not args.skip_hand:
        doc["by_hand_s"] = by_hand(args.inventory)
        doc["first_over_by_hand"] = round(doc["first_s"] / doc["by_hand_s"], 3)
    timed_run(args.inventory, "playbooks/teardown.yml")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"overhead-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(doc, indent=2))
    keys = ("first_s", "rerun_s", "rerun_changed", "rerun_over_first", "by_hand_s", "first_over_by_hand")
    print(json.dumps({k: doc[k] for k in keys if k in doc}, indent=2))
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
