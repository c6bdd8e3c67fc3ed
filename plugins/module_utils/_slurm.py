# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SLURM path's rules (seed 002): vLLM across nodes inside one batch job.

Pure functions, unit-tested: the checks of the slurm_* options, the parallel layout of the job
(TP = GPUs per node, PP = nodes unless given), what ``sinfo``, ``scontrol`` and ``squeue`` print,
whether the partition can hold the plan (with numbers), the job's identity (a hash of the rendered
script and of its secrets file, carried in ``--comment``) and what to do with the jobs found
(keep the one with our identity, cancel the others, submit when none is kept).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

COMMENT_PREFIX = "multinode-vllm:"
#: Job states after which the job is gone for good (squeue/scontrol JobState).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
#: Job states of a job that still holds or waits for its nodes.
LIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUED"})
#: Node states (sinfo %T, without the flags * ~ # ! % $ @ ^ -) in which a node can run a job.
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED / INFINITE.
TIME_RE = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|UNLIMITED|INFINITE)$"
)
HOSTLIST_RE = re.compile(r"^[A-Za-z0-9_.\-\[\],]+$")
GRES_GPU_RE = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")


# --- the options ---------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def option_problems(opts: Mapping[str, Any]) -> list[str]:
    """One sentence per bad slurm_* option: the variable, its value, what is valid."""
    problems: list[str] = []

    def bad(var: str, want: str) -> None:
        problems.append(f"{var}={opts.get(var)!r}: {want}")

    for var in (
        "slurm_nodes",
        "slurm_gpus_per_node",
        "slurm_submit_timeout",
        "slurm_health_timeout",
        "slurm_ray_timeout",
        "slurm_poll_interval",
        "slurm_output_lines",
        "slurm_teardown_timeout",
        "slurm_kill_wait",
    ):
        if var in opts and (not _is_int(opts[var]) or int(opts[var]) < 1):
            bad(var, "use a whole number of at least 1 (no quotes)")
    for var in ("slurm_exclusive", "slurm_ignore_capacity"):
        if var in opts and not isinstance(opts[var], bool) and str(opts[var]).lower() not in _BOOL_WORDS:
            bad(var, "use true or false")
    if "slurm_memory_fraction" in opts:
        try:
            fraction = float(opts["slurm_memory_fraction"])
        except (TypeError, ValueError):
            fraction = float("nan")
        if isinstance(opts["slurm_memory_fraction"], bool) or not 0 < fraction <= 1:
            bad("slurm_memory_fraction", "use a number above 0 and at most 1, e.g. 0.95 (of what slurmd -C reports)")
    dp = opts.get("vllm_serve_data_parallel_size")
    if dp not in (None, "", 1, "1"):
        if not _is_int(dp) or int(dp) < 1:
            bad("vllm_serve_data_parallel_size", "use a whole number of at least 1 (no quotes)")
        elif opts.get("multinode_backend", "mp") != "mp":
            problems.append(
                f"vllm_serve_data_parallel_size={dp!r} with multinode_backend={opts.get('multinode_backend')!r}: "
                "data parallel in a SLURM job runs on the mp backend (one vllm serve per node, --headless "
                "--data-parallel-start-rank on the others). Fix: set multinode_backend: mp, or remove "
                "vllm_serve_data_parallel_size"
            )
    for var in ("slurm_partition", "slurm_job_name"):
        if var in opts and not (isinstance(opts[var], str) and NAME_RE.match(opts[var])):
            bad(var, "use a name of letters, digits and _ . + - (no spaces)")
    for var in ("slurm_account", "slurm_qos", "slurm_gres_type"):
        value = opts.get(var, "")
        if value and not (isinstance(value, str) and NAME_RE.match(value)):
            bad(var, "use a name of letters, digits and _ . + -, or leave it empty")
    for var in ("slurm_nodelist", "slurm_exclude"):
        value = opts.get(var, "")
        if value and not (isinstance(value, str) and HOSTLIST_RE.match(value)):
            bad(var, "use a SLURM host list like node[01-04],gpu7 (no spaces), or leave it empty")
    constraint = opts.get("slurm_constraint", "")
    if constraint and not (isinstance(constraint, str) and re.match(r"^[A-Za-z0-9_.&|\[\]()*:!-]+$", constraint)):
        bad("slurm_constraint", "use a SLURM feature expression like h100&ib (no spaces), or leave it empty")
    if "slurm_time_limit" in opts and not (
        isinstance(opts["slurm_time_limit"], (str, int)) and TIME_RE.match(str(opts["slurm_time_limit"]))
    ):
        bad("slurm_time_limit", "use minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED (as sbatch --time takes it)")
    workdir = opts.get("slurm_workdir")
    if workdir is not None and not (isinstance(workdir, str) and workdir.startswith("/") and " " not in workdir):
        bad(
            "slurm_workdir",
            "use an absolute path without spaces on storage every compute node sees at the same path "
            "(the job's output and its secrets file live there)",
        )
    extra = opts.get("slurm_extra_directives", [])
    if not isinstance(extra, list) or not all(
        isinstance(x, str) and x.startswith("--") and "\n" not in x for x in extra
    ):
        bad(
            "slurm_extra_directives", "use a list of sbatch options, one per item, each starting with -- (e.g. --mem=0)"
        )
    return problems


def _size(value: Any, default: int) -> int:
    """A parallel size the inventory gave (empty or 0: not given, the default)."""
    return int(value) if value not in (None, "", 0) else default


def parallel_layout(
    nodes: int,
    gpus_per_node: int,
    tensor_parallel_size: Any = None,
    pipeline_parallel_size: Any = None,
    data_parallel_size: Any = None,
) -> dict[str, Any]:
    """DP, TP and PP of the job. One replica (DP 1): TP = GPUs per node and PP = nodes unless given
    (the seed's layout). Data parallel (DP > 1, the mp backend): DP / nodes replicas on each node,
    each on TP x PP GPUs of that node (TP = the node's GPUs / its replicas, PP = 1 unless given).

    ``problem`` is empty when DP x TP x PP is the job's GPU count (and a replica fits one node);
    else one sentence with the numbers and the fix.
    """
    dp = _size(data_parallel_size, 1)
    gpus = nodes * gpus_per_node
    if dp > 1:
        local = dp // nodes if dp % nodes == 0 else 0
        pp = _size(pipeline_parallel_size, 1)
        default_tp = gpus_per_node // (local * pp) if local and gpus_per_node % (local * pp) == 0 else 1
        tp = _size(tensor_parallel_size, default_tp)
        problem = ""
        if not local:
            problem = (
                f"vllm_serve_data_parallel_size={dp} does not spread evenly over {nodes} nodes "
                "(each node runs the same number of replicas). Fix: a multiple of slurm_nodes"
            )
        elif local * tp * pp != gpus_per_node:
            problem = (
                f"DP {dp} x TP {tp} x PP {pp} = {dp * tp * pp} GPUs: {local} replicas of TP {tp} x PP {pp} on each "
                f"node need {local * tp * pp} GPUs, the job's nodes have {gpus_per_node}. Fix: set "
                "vllm_serve_data_parallel_size, vllm_serve_tensor_parallel_size and vllm_serve_pipeline_parallel_size "
                "so that DP / slurm_nodes x TP x PP = slurm_gpus_per_node (a replica never crosses a node)"
            )
        return {
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "data_parallel_size": dp,
            "data_parallel_size_local": local,
            "gpus": gpus,
            "problem": problem,
        }
    tp = _size(tensor_parallel_size, gpus_per_node)
    pp = _size(pipeline_parallel_size, nodes)
    problem = ""
    if tp * pp != gpus:
        problem = (
            f"TP {tp} x PP {pp} = {tp * pp} GPUs, but the job asks for {nodes} nodes x {gpus_per_node} GPUs = {gpus}. "
            "Fix: set slurm_nodes and slurm_gpus_per_node so that their product is TP x PP, or leave "
            "vllm_serve_tensor_parallel_size / vllm_serve_pipeline_parallel_size unset (TP = GPUs per node, PP = nodes)"
        )
    elif tp > gpus_per_node and tp % gpus_per_node:
        problem = (
            f"TP {tp} does not split evenly over nodes of {gpus_per_node} GPUs. "
            "Fix: use a TP that is a multiple or a divisor of slurm_gpus_per_node"
        )
    return {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "data_parallel_size": 1,
        "data_parallel_size_local": 1,
        "gpus": gpus,
        "problem": problem,
    }


# --- what SLURM prints ---------------------------------------------------------------------------


def parse_key_values(text: str) -> dict[str, str]:
    """``scontrol show ... -o`` (one line of Key=Value pairs); values run to the next `` Key=``."""
    line = " ".join(text.strip().splitlines())
    out: dict[str, str] = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)", line):
        out[m.group(1)] = m.group(2).strip()
    return out


def gres_gpus(gres: str) -> int:
    """GPUs in a GRES string (``gpu:8``, ``gpu:h100:8(S:0-1)``, ``gpu:a:2,gpu:b:2``); 0 if none."""
    total = 0
    for part in re.split(r",(?![^()]*\))", gres or ""):
        m = GRES_GPU_RE.match(part.strip())
        if m:
            total += int(m.group(1))
    return total


def parse_sinfo_nodes(text: str) -> list[dict[str, Any]]:
    """``sinfo -h -N -p P -o '%N|%T|%G|%c|%m'``: one dict per node (state without its flags)."""
    nodes: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        parts = raw.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].strip().lower().rstrip("*~#!%$@^-+")
        node: dict[str, Any] = {
            "name": parts[0].strip(),
            "state": state,
            "gpus": gres_gpus(parts[2]),
            "cpus": int(parts[3]) if len(parts) > 3 and parts[3].strip().isdigit() else 0,
            "memory_mb": int(parts[4]) if len(parts) > 4 and parts[4].strip().isdigit() else 0,
        }
        node["usable"] = state in USABLE_NODE_STATES
        nodes[node["name"]] = node  # a node in two partitions is listed twice
    return list(nodes.values())


def capacity_problem(
    partition: str,
    partition_info: Mapping[str, str],
    nodes: Iterable[Mapping[str, Any]],
    want_nodes: int,
    want_gpus_per_node: int,
) -> str:
    """Why the partition cannot run the plan (numbers), or "" when it can."""
    if not partition_info:
        return (
            f"partition {partition!r} does not exist on this cluster (scontrol show partition). "
            "Fix: set slurm_partition to one that sinfo lists"
        )
    state = partition_info.get("State", "UP")
    if state != "UP":
        return (
            f"partition {partition!r} is {state}, not UP: jobs do not start there. "
            "Fix: ask the admins, or use another slurm_partition"
        )
    listed = list(nodes)
    usable = [n for n in listed if n.get("usable")]
    fit = [n for n in usable if int(n.get("gpus", 0)) >= want_gpus_per_node]
    if len(fit) >= want_nodes:
        return ""
    max_nodes = partition_info.get("MaxNodes", "UNLIMITED")
    down = [f"{n['name']} ({n['state']})" for n in listed if not n.get("usable")]
    return (
        f"partition {partition!r} cannot hold the plan: it needs {want_nodes} nodes x {want_gpus_per_node} GPUs = "
        f"{want_nodes * want_gpus_per_node} GPUs, the partition has {len(listed)} nodes "
        f"({sum(int(n.get('gpus', 0)) for n in listed)} GPUs), "
        f"{len(fit)} of them up with {want_gpus_per_node} or more GPUs"
        + (f"; not usable: {', '.join(down)}" if down else "")
        + (f"; MaxNodes={max_nodes}" if max_nodes not in ("UNLIMITED", "") else "")
        + ". Fix: use a partition with enough GPU nodes (slurm_partition), or a smaller plan "
        "(slurm_nodes, slurm_gpus_per_node, with a model that fits them)"
    )


def parse_squeue(text: str) -> list[dict[str, str]]:
    """``squeue -h -o '%i|%T|%k|%N|%M|%L|%r'``: id, state, comment, nodes, elapsed, left, reason."""
    keys = ("job_id", "state", "comment", "nodes", "elapsed", "time_left", "reason")
    jobs = []
    for raw in text.splitlines():
        parts = raw.strip().split("|")
        if len(parts) < 2 or not parts[0].strip():
            continue
        job = {k: (parts[i].strip() if i < len(parts) else "") for i, k in enumerate(keys)}
        jobs.append(job)
    return jobs


def job_identity(script: str, secrets_digest: str = "") -> str:
    """The job's ``--comment``: a sha1 of the rendered script (and of its secrets file's digest)."""
    blob = script.encode() + b"\0" + secrets_digest.encode()
    return COMMENT_PREFIX + hashlib.sha1(blob, usedforsecurity=False).hexdigest()


def decide(jobs: Iterable[Mapping[str, str]], comment: str) -> dict[str, Any]:
    """What to do with the jobs of our name: keep the live one with our comment, cancel the others.

    Returns ``{"keep": id or "", "cancel": [ids], "submit": bool}``.
    """
    keep = ""
    cancel: list[str] = []
    for job in jobs:
        state = job.get("state", "").upper()
        if state not in LIVE_STATES:
            continue
        if not keep and job.get("comment") == comment:
            keep = job["job_id"]
        else:
            cancel.append(job["job_id"])
    return {"keep": keep, "cancel": cancel, "submit": not keep}


def parse_slurmd_c(text: str) -> dict[str, Any]:
    """``slurmd -C`` (what the node has): NodeName, CPUs, Boards, Sockets..., RealMemory."""
    first = next((ln for ln in text.splitlines() if ln.startswith("NodeName=")), "")
    kv = parse_key_values(first)
    out: dict[str, Any] = dict(kv)
    for key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"):
        if key in kv and kv[key].isdigit():
            out[key] = int(kv[key])
    return out


def node_conf(found: Mapping[str, Any], gpus: int, memory_fraction: float = 1.0) -> str:
    """One slurm.conf NodeName line from ``slurmd -C``: never more CPUs or memory than it reports
    (more drains the node: "Low RealMemory"/"Low CPUs")."""
    name = found.get("NodeName", "")
    if not name:
        raise ValueError("slurmd -C printed no NodeName= line")
    memory = int(int(found.get("RealMemory", 1)) * memory_fraction)
    parts = [f"NodeName={name}", f"CPUs={found.get('CPUs', 1)}"]
    for key in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"):
        if key in found:
            parts.append(f"{key}={found[key]}")
    parts.append(f"RealMemory={max(memory, 1)}")
    if gpus:
        parts.append(f"Gres=gpu:{gpus}")
    return " ".join(parts)


def job_status(job: Mapping[str, str]) -> dict[str, Any]:
    """The status report of one job from ``scontrol show job -o``."""
    state = job.get("JobState", "")
    return {
        "job_id": job.get("JobId", ""),
        "state": state,
        "reason": job.get("Reason", "None"),
        "nodes": job.get("NodeList", ""),
        "head": job.get("BatchHost", ""),
        "elapsed": job.get("RunTime", ""),
        "time_limit": job.get("TimeLimit", ""),
        "end_time": job.get("EndTime", ""),
        "output": job.get("StdOut", ""),
        "running": state == "RUNNING",
        "finished": state in TERMINAL_STATES,
    }
