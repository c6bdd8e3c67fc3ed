"""`multinode-vllm status`: what runs where, healthy or not (playbooks/status.yml)."""

from __future__ import annotations

import argparse
import json
import sys

from multinode_vllm.progress import (
    EXIT_USAGE,
    UsageError,
    add_run_arguments,
    execute,
    options_from_args,
)


def _cmd(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args, playbook="playbooks/status.yml")
    except UsageError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    code, result, _exc = execute(options, json_out=args.json)
    if result is not None and result.exported and not args.json:
        # what the status play exported with set_stats: the per-node state table, with `problems`;
        # also when a node did not answer (exit 3): the play goes on for the others
        print(json.dumps(result.exported, indent=2, sort_keys=True, default=str))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="show what runs where and whether it is healthy (playbooks/status.yml)",
        description=__doc__,
    )
    add_run_arguments(p, tags=False)
    p.set_defaults(func=_cmd)
