#!/usr/bin/env python3
"""What the automation costs: `up` wall time against the same Ray + vLLM started by hand.

On the local test bed (inventories/local, started by `multinode-vllm up` or `testbed up`):

1. teardown, then `site.yml` through the runner API: first-run time (cluster from stopped);
2. `site.yml` again: rerun time (everything already in place: the idempotent path);
3. teardown, then the same Ray head, Ray worker and `vllm serve` started by hand over ssh, timed
   until /health answers 200 and a chat completion returns text;
4. teardown.

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
    result = run(RunOptions(inventory=inventory, playbook=playbook, **kw))
    return time.monotonic() - t, result.to_dict()


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


def first(hv: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if hv.get(n) not in (None, ""):
            return hv[n]
    return default


def by_hand(inventory: str, timeout: float = 600) -> float:
    """Ray head, Ray worker(s), vllm serve on the head: the seed guide's commands over ssh."""
    listing = inventory_vars(inventory)
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    head = head_host(listing)
    workers = list((listing.get("ray_workers") or {}).get("hosts") or [])
    hv = hostvars[head]
    venv = first(hv, "multinode_venv", "multinode_node_venv", "ray_head_venv", default="/opt/multinode-vllm/venv")
    model = first(hv, "multinode_model_path", "multinode_model", "vllm_serve_model")
    served = first(hv, "multinode_served_model_name", "vllm_serve_served_model_name", default="tiny")
    port = int(first(hv, "multinode_vllm_port", "vllm_serve_port", default=8000))
    gpus = int(first(hv, "multinode_gpus_per_node", "ray_head_num_gpus", default=1))
    tp = int(first(hv, "multinode_tensor_parallel_size", "vllm_serve_tensor_parallel_size", default=1))
    pp = int(first(hv, "multinode_pipeline_parallel_size", "vllm_serve_pipeline_parallel_size", default=2))
    extra = first(hv, "vllm_serve_extra_args", "multinode_vllm_extra_args", default=[])
    env = first(hv, "vllm_serve_environment", "multinode_vllm_environment", default={})
    if not model:
        raise SystemExit("overhead: the inventory names no model path (multinode_model_path)")

    def ip(h: str) -> str:
        v = hostvars[h]
        return str(first(v, "multinode_node_ip", "ray_node_ip", "ansible_host", default=h))

    head_ip = ip(head)
    envs = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    t = time.monotonic()
    sh(hv, head, f"{venv}/bin/ray start --head --node-ip-address={head_ip} --port=6379 --num-gpus={gpus}")
    for w in workers:
        sh(
            hostvars[w],
            w,
            f"{venv}/bin/ray start --address={head_ip}:6379 --node-ip-address={ip(w)} --num-gpus={gpus}",
        )
    serve = (
        f"{envs} VLLM_HOST_IP={head_ip} nohup {venv}/bin/vllm serve {shlex.quote(str(model))} "
        f"--served-model-name {shlex.quote(str(served))} --host 0.0.0.0 --port {port} "
        f"--tensor-parallel-size {tp} --pipeline-parallel-size {pp} --distributed-executor-backend ray "
        f"{' '.join(shlex.quote(str(a)) for a in extra)} >/tmp/overhead-vllm.log 2>&1 & echo $!"
    )
    pid = sh(hv, head, serve).strip()
    ep = Endpoint(f"http://{hv.get('ansible_host') or head}:{port}", model=str(served))
    deadline = time.monotonic() + timeout
    while True:
        try:
            chat_once(ep, "hello", max_tokens=4, timeout=10)
            break
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            if time.monotonic() > deadline:
                raise SystemExit("overhead: vllm started by hand never answered") from None
            time.sleep(1)
    elapsed = time.monotonic() - t
    sh(hv, head, f"kill {pid}; sleep 2; {venv}/bin/ray stop --force", timeout=60)
    for w in workers:
        sh(hostvars[w], w, f"{venv}/bin/ray stop --force", timeout=60)
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
        timed_run(args.inventory, "playbooks/teardown.yml")
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
