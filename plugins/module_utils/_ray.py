# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure helpers of the ``ray_cluster_info`` module: what Ray sees, and what is missing.

The query runs ``ray.nodes()`` in the node's own Ray (venv python, or ``docker exec`` into the
Ray container): with the dashboard off, ``ray list`` (the state API) does not work, and
``ray status`` prints node ids, not addresses. The script prints one marked JSON line so that the
log lines Ray writes around it never confuse the parser.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "MNV_RAY_NODES "
#: The cluster's available resources (``ray.available_resources()``): the object store in use.
AVAILABLE_MARKER = "MNV_RAY_AVAILABLE "

# Run as ``python -c NODES_SCRIPT ADDRESS [EXPECTED_IPS_JSON EXPECTED_GPUS WAIT INTERVAL]``.
# log_to_driver=False: no worker logs on stdout. With the expectation (a gate), one process
# connects once and asks the GCS again every INTERVAL seconds until the alive nodes hold every
# expected address and at least EXPECTED_GPUS GPUs (-1: any), or WAIT seconds pass; then it prints
# the last answer. A new process per poll cost a Python start, `import ray` and `ray.init` (about
# 1.5 s on the test bed) for every look. The module's verdict (``compare``) is the one that counts.
NODES_SCRIPT = (
    "import json, sys, time\n"
    "import ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False,"
    " configure_logging=False)\n"
    "try:\n"
    "    want = json.loads(sys.argv[2]) if len(sys.argv) > 5 else None\n"
    "    end = time.monotonic() + float(sys.argv[4]) if want is not None else 0\n"
    "    while True:\n"
    "        nodes = ray.nodes()\n"
    "        alive = [n for n in nodes if isinstance(n, dict) and n.get('Alive', n.get('alive'))]\n"
    "        ips = {str(n.get('NodeManagerAddress', '')) for n in alive}\n"
    "        gpus = sum(float((n.get('Resources') or {}).get('GPU', 0) or 0) for n in alive)\n"
    "        if want is None or (set(want) <= ips and gpus >= float(sys.argv[3]))"
    " or time.monotonic() + float(sys.argv[5]) > end:\n"
    "            break\n"
    "        time.sleep(float(sys.argv[5]))\n"
    "    print(" + repr(MARKER) + " + json.dumps(nodes, default=str), flush=True)\n"
    "    print(" + repr(AVAILABLE_MARKER) + " + json.dumps(ray.available_resources(), default=str), flush=True)\n"
    "finally:\n"
    "    ray.shutdown()\n"
)
#: Seconds between two looks of a watching query (one GCS request each, in the running process).
WATCH_INTERVAL = 0.5


class RayQueryError(Exception):
    """The query ran but its output holds no node list."""


def build_query_argv(
    python_cmd: list[str],
    address: str,
    timeout: int,
    watch: tuple[list[str], float | None, float] | None = None,
) -> list[str]:
    """The argv that prints the node list; ``timeout`` bounds a query against a dead GCS.

    ``watch`` = (expected node addresses, expected GPUs or None, seconds): the process keeps asking
    until Ray sees them or the seconds pass (``timeout`` is then added to those seconds).
    """
    if not python_cmd:
        raise ValueError("python_cmd is empty: give the python that has Ray, e.g. [/opt/venv/bin/python]")
    argv = [*python_cmd, "-c", NODES_SCRIPT, address]
    if watch is not None:
        nodes, gpus, seconds = watch
        argv += [json.dumps(list(nodes)), str(-1 if gpus is None else gpus), str(max(seconds, 0)), str(WATCH_INTERVAL)]
        timeout = timeout + int(max(seconds, 0)) if timeout > 0 else 0
    if timeout > 0:
        argv = ["timeout", "--kill-after=5", str(int(timeout)), *argv]
    return argv


def parse_nodes_output(stdout: str) -> list[dict[str, Any]]:
    """The ``ray.nodes()`` list from the query's stdout (the last marked line wins)."""
    found: list[dict[str, Any]] | None = None
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            if not isinstance(data, list):
                raise RayQueryError(f"ray.nodes() returned {type(data).__name__}, not a list")
            found = [n for n in data if isinstance(n, dict)]
    if found is None:
        raise RayQueryError("no node list in the output of the Ray query")
    return found


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def parse_available_output(stdout: str) -> dict[str, Any]:
    """``ray.available_resources()`` from the query's stdout; {} when the line is missing or bad."""
    found: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(AVAILABLE_MARKER):
            try:
                data = json.loads(line[len(AVAILABLE_MARKER) :])
            except ValueError:
                continue
            found = data if isinstance(data, dict) else {}
    return found


def summarize(nodes: list[dict[str, Any]], available: dict[str, Any] | None = None) -> dict[str, Any]:
    """Alive nodes with their address and resources; dead entries only counted.

    A restarted raylet leaves its old entry behind (``Alive: false``) next to the new one, so
    only alive entries count. ``available`` (``ray.available_resources()``) gives the object store
    in use: its capacity (the nodes' ``object_store_memory``) less what is available; None when
    not known.
    """
    alive: list[dict[str, Any]] = []
    dead = 0
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            dead += 1
            continue
        res = node.get("Resources") or {}
        alive.append(
            {
                "node_id": str(node.get("NodeID", "")),
                "ip": str(node.get("NodeManagerAddress", "")),
                "hostname": str(node.get("NodeManagerHostname", "")),
                "is_head": bool(node.get("IsHeadNode", False))
                or any(str(k).startswith("node:__internal_head__") for k in res),
                "gpus": _num(res.get("GPU", 0)),
                "cpus": _num(res.get("CPU", 0)),
                "object_store_bytes": int(_num(res.get("object_store_memory", 0))),
            }
        )
    alive.sort(key=lambda n: (not n["is_head"], n["ip"]))
    gpus = sum(n["gpus"] for n in alive)
    store = sum(n["object_store_bytes"] for n in alive)
    free = (available or {}).get("object_store_memory")
    used = max(store - int(_num(free)), 0) if free is not None and store else None
    return {
        "alive_nodes": alive,
        "alive_count": len(alive),
        "dead_count": dead,
        "node_ips": sorted({n["ip"] for n in alive}),
        "gpus": int(gpus) if float(gpus).is_integer() else gpus,
        "object_store_bytes": store,
        "object_store_used_bytes": used,
    }


def compare(summary: dict[str, Any], expected_nodes: list[str], expected_gpus: float | None) -> dict[str, Any]:
    """What is missing against the expectation, and one sentence that says it."""
    seen = set(summary["node_ips"])
    expected = list(dict.fromkeys(expected_nodes))
    missing = [ip for ip in expected if ip not in seen]
    unexpected = sorted(seen - set(expected)) if expected else []
    problems = []
    if missing:
        problems.append(
            f"Ray sees {len(expected) - len(missing)} of {len(expected)} nodes: {', '.join(missing)} missing"
        )
    if expected_gpus is not None and summary["gpus"] < expected_gpus:
        want = int(expected_gpus) if float(expected_gpus).is_integer() else expected_gpus
        problems.append(f"Ray sees {summary['gpus']} of {want} GPUs")
    if problems:
        msg = "; ".join(problems)
    else:
        msg = f"Ray sees {summary['alive_count']} nodes and {summary['gpus']} GPUs"
    return {"ok": not problems, "missing": missing, "unexpected": unexpected, "msg": msg}


EMPTY_SUMMARY: dict[str, Any] = {
    "alive_nodes": [],
    "alive_count": 0,
    "dead_count": 0,
    "node_ips": [],
    "gpus": 0,
    "object_store_bytes": 0,
    "object_store_used_bytes": None,
}


def query_once(run: Any, argv: list[str]) -> tuple[dict[str, Any] | None, str]:
    """One query through ``run(argv) -> (rc, stdout, stderr)``: (summary or None, error text)."""
    rc, out, err = run(argv)
    try:
        return summarize(parse_nodes_output(out), parse_available_output(out)), ""
    except (RayQueryError, ValueError) as exc:
        tail = "\n".join((err or out or "").strip().splitlines()[-8:])
        return None, f"rc={rc}: {exc} {tail}"


def verdict(
    summary: dict[str, Any] | None, error: str, address: str, expected_nodes: list[str], expected_gpus: float | None
) -> dict[str, Any]:
    """The result of one query as ``ray_cluster_info`` returns it (without changed/polls)."""
    if summary is not None:
        found = compare(summary, expected_nodes, expected_gpus)
    else:
        found = {
            "ok": False,
            "missing": list(expected_nodes),
            "unexpected": [],
            "msg": f"cannot query Ray at {address} ({error})",
        }
    result = dict(EMPTY_SUMMARY if summary is None else summary)
    result.update(found)
    result["reachable"] = summary is not None
    return result
