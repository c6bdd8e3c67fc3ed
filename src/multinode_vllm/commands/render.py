"""`multinode-vllm render`: the kubernetes platform's manifests of an inventory (playbooks/k8s.yml).

Plans the model, renders the k8s_flavour's objects (KServe, LeaderWorkerSet or KubeRay) into
``--out``, and checks them offline against the pinned schemas and multinode.vllm's rules. Nothing
is applied unless the inventory gives ``k8s_kubeconfig`` (``--no-apply`` forbids it anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from multinode_vllm.progress import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_run_arguments,
    execute,
    options_from_args,
)

FLAVOURS = ("kserve", "lws", "kuberay")


def _cmd(args: argparse.Namespace) -> int:
    extra: dict[str, object] = {"k8s_out_dir": str(Path(args.out).resolve())}
    if args.flavour:
        extra["k8s_flavour"] = args.flavour
    if not args.inventory:
        print("render: give the inventory (-i inventories/kubernetes-kserve)", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = options_from_args(args, playbook="playbooks/k8s.yml", extra=extra)
    except UsageError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.no_apply:
        # extra_vars from -e come after ours: --no-apply wins over -e k8s_kubeconfig=...
        options = dataclasses.replace(options, extra_vars={**options.extra_vars, "k8s_kubeconfig": ""})
    code, _result, _err = execute(options, json_out=args.json)
    if code == EXIT_OK and not args.json:
        print(f"manifests in {extra['k8s_out_dir']}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="write and validate the Kubernetes manifests (KServe, LeaderWorkerSet, KubeRay) of an inventory",
        description=__doc__,
    )
    add_run_arguments(p, tags=False)
    p.add_argument("--out", required=True, help="directory the manifests are written to")
    p.add_argument("--flavour", choices=FLAVOURS, help="override k8s_flavour of the inventory")
    p.add_argument("--no-apply", action="store_true", help="never apply, even when the inventory gives k8s_kubeconfig")
    p.set_defaults(func=_cmd)
