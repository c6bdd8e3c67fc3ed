"""`multinode-vllm down`: stop serving and the Ray cluster, keep the model cache (teardown.yml).

With ``--testbed`` the local simulated cluster (its node containers and networks) is removed too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from multinode_vllm import PROJECT_DIR, InventoryError
from multinode_vllm.progress import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_run_arguments,
    execute,
    options_from_args,
)

TESTBED_NAME = "mnv"


def remove_testbed(name: str) -> int:
    # the test bed needs podman: loaded on demand
    testbed: Any = importlib.import_module("multinode_vllm.testbed")

    try:
        testbed.down(name)
    except Exception as exc:  # the test bed reports its own errors; the CLI turns them into exit 1
        print(f"down: removing test bed {name!r} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"test bed {name!r} removed", file=sys.stderr)
    return EXIT_OK


def _cmd(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args, playbook="playbooks/teardown.yml")
    except UsageError as exc:
        print(f"down: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code = EXIT_OK
    inv = options.inventory or PROJECT_DIR / "inventories" / "local"
    if args.testbed and not (PROJECT_DIR / inv).exists():
        print(f"down: no inventory at {inv}; only removing the test bed", file=sys.stderr)
    else:
        code, _res, err = execute(options, json_out=args.json)
        if args.testbed and code != EXIT_OK and not isinstance(err, InventoryError):
            print("down: teardown failed; removing the test bed anyway", file=sys.stderr)
    if args.testbed:
        tb = remove_testbed(args.name)
        code = code or tb
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "down",
        help="stop vLLM and Ray (keep the model cache); --testbed also removes the local test bed",
        description=__doc__,
    )
    add_run_arguments(p, tags=False)
    p.add_argument("--testbed", action="store_true", help="also remove the local simulated cluster")
    p.add_argument("--name", default=TESTBED_NAME, help="test bed name (default %(default)s)")
    p.set_defaults(func=_cmd)
