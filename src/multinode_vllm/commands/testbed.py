"""`multinode-vllm testbed up|down|status`: the local simulated cluster (podman nodes).

Exit codes: 0 ok, 1 failed (a node did not boot, podman failed), 2 bad input (options, a subnet
clash, a test bed already up with other parameters).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _tb() -> Any:
    # podman-only code: imported when a testbed subcommand runs, not when the CLI starts
    return importlib.import_module("multinode_vllm.testbed")


def _size(value: str) -> str:
    return value.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "testbed",
        help="the local simulated cluster: systemd node containers (podman)",
        description="Start, inspect and remove a simulated multi-node cluster on this machine.",
    )
    sub = parser.add_subparsers(dest="testbed_command", metavar="ACTION")

    up = sub.add_parser("up", help="start a test bed (idempotent)")
    up.add_argument("--name", default="mnv", help="prefix of every podman object (default: mnv)")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default: 2)")
    up.add_argument(
        "--layout",
        choices=("bond0", "droplet", "slurm", "dynamo"),
        default="bond0",
        help="NIC layout (default: bond0); slurm: bond0 NICs, node1 the SLURM controller + login, the others compute; "
        "dynamo: bond0 NICs, etcd and NATS in the node image, the Dynamo venv mounted, group dynamo_testbed",
    )
    up.add_argument("--rails", type=int, default=2, help="droplet: data rails eth2.. (default: 2)")
    up.add_argument(
        "--subnet-index",
        type=int,
        default=None,
        help="second octet I of the test bed's 10.I.0.0/16 (default: derived from --name)",
    )
    up.add_argument("--shared-dir", type=Path, default=None, help="shared storage (default: /srv/multinode-vllm/NAME)")
    up.add_argument("--gpus-per-node", type=int, default=8, help="GPUs the fake NVML reports (default: 8)")
    up.add_argument("--shm-size", type=_size, default="2g", help="/dev/shm per node (default: 2g)")
    up.add_argument("--memory", type=_size, default=None, help="memory limit per node (e.g. 4g)")
    up.add_argument("--install-deps", action="store_true", help="apt-get install missing podman/runc/debootstrap")
    up.add_argument(
        "--local-inventory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write inventories/local/hosts.yml (default: when it is free or already this test bed's)",
    )
    up.add_argument("--json", action="store_true", help="print the test bed as JSON")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="remove a test bed's containers, networks and state")
    down.add_argument("--name", default="mnv")
    down.add_argument("--purge", action="store_true", help="also delete the shared dir (model cache)")
    down.add_argument("--json", action="store_true")
    down.set_defaults(func=_down)

    st = sub.add_parser("status", help="nodes, addresses, SSH")
    st.add_argument("--name", default="mnv")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    parser.set_defaults(func=lambda _args: (parser.print_help(), EXIT_USAGE)[1])


def _up(args: argparse.Namespace) -> int:
    tb = _tb()
    spec = tb.TestbedSpec(
        name=args.name,
        nodes=args.nodes,
        layout=args.layout,
        rails=args.rails,
        subnet_index=args.subnet_index,
        shared_dir=args.shared_dir,
        gpus_per_node=args.gpus_per_node,
        shm_size=args.shm_size,
        memory=args.memory,
        install_deps=args.install_deps,
        local_inventory=args.local_inventory,
    )
    t0 = time.monotonic()
    try:
        bed = tb.up(spec)
    except tb.UsageError as exc:
        print(f"testbed up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except tb.TestbedError as exc:
        print(f"testbed up: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**bed.to_dict(), "wall_s": round(time.monotonic() - t0, 2)}, indent=2))
    else:
        print(f"test bed {bed.name}: {'already up' if bed.already_up else 'up'} ({time.monotonic() - t0:.1f}s)")
        for node in bed.nodes:
            ips = " ".join(f"{k}={v}" for k, v in node.ips.items())
            print(f"  {node.hostname:8} {node.container:20} {ips}")
        print(f"  inventory: {bed.local_inventory or bed.inventory}")
        print(f"  ssh: {' '.join(bed.ssh_argv(1))}")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    tb = _tb()
    try:
        removed = tb.down(args.name, purge=args.purge)
    except tb.UsageError as exc:
        print(f"testbed down: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except tb.TestbedError as exc:
        print(f"testbed down: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(removed, indent=2))
    else:
        print(
            f"test bed {args.name}: removed {len(removed['containers'])} containers, "
            f"{len(removed['networks'])} networks"
            + (f", state {removed['state_dir']}" if removed["state_dir"] else "")
            + (f", {removed['local_inventory']}" if removed["local_inventory"] else "")
            + (f", shared dir {removed['shared_dir']}" if removed["shared_dir"] else "")
        )
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    tb = _tb()
    try:
        st = tb.status(args.name)
    except tb.TestbedError as exc:
        print(f"testbed status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(st, indent=2))
    elif not st["exists"]:
        print(f"test bed {args.name}: not up")
    else:
        print(f"test bed {args.name} ({st['layout']}): {'healthy' if st['healthy'] else 'NOT healthy'}")
        print(f"  {'NODE':8} {'CONTAINER':20} {'STATE':9} {'SSH':4} IPS")
        for r in st["nodes"]:
            ips = " ".join(f"{k}={v}" for k, v in r["ips"].items())
            ssh = "ok" if r["ssh"] else "no"
            print(f"  {r['hostname'] or '-':8} {r['container']:20} {r['state']:9} {ssh:4} {ips}")
        print(f"  inventory: {st['local_inventory'] or st['inventory']}")
    return EXIT_OK if st["healthy"] or not st["exists"] else EXIT_FAILED
