# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which managed unit (native: systemd) or container (docker) must restart, and why.

Pure functions, one place for the rules that the cluster and serve phases and status.yml share:

- a unit whose unit file or environment file changed after it started runs on old settings (a run
  stopped between writing the file and its restart handler): it must restart;
- vLLM does not survive a lost member: a Ray node (ray backend) or a headless vLLM (mp backend) that
  started after vLLM leaves an engine whose workers are gone while /health still answers 200.

Inputs are what ``systemctl show --timestamp=unix`` and ``docker inspect`` print; times are
seconds since the epoch, 0 for "not running".
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from typing import Any

SYSTEMD_PROPERTIES = (
    "Id",
    "LoadState",
    "FragmentPath",
    "ActiveState",
    "ActiveEnterTimestamp",
    "NeedDaemonReload",
    "NRestarts",
)

_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def unit_path(name: str) -> str:
    """Where the roles install the systemd unit ``name``."""
    return "/etc/systemd/system/%s.service" % name


def systemctl_show_argv(names: list[str]) -> list[str]:
    """One ``systemctl show`` for the units ``names``: a block of SYSTEMD_PROPERTIES per unit."""
    argv = ["systemctl", "show", "--timestamp=unix"]
    argv += ["--property=%s" % p for p in SYSTEMD_PROPERTIES]
    argv += ["%s.service" % n for n in names]
    return argv


def file_mtimes(paths: list[str]) -> dict[str, float]:
    """path -> modification time, 0.0 for a file that is not there."""
    found: dict[str, float] = {}
    for path in paths:
        try:
            found[path] = os.stat(path).st_mtime
        except OSError:
            found[path] = 0.0
    return found


def unit_files(name: str, runtime: str, config_dir: str) -> list[str]:
    """The files a unit's process reads at start: its systemd unit (native) and its environment file
    (native; docker: the secrets file mounted into the container)."""
    files = [unit_path(name)] if runtime == "native" else []
    files.append("%s/%s.env" % (config_dir.rstrip("/"), name))
    return files


def ray_auth_env(backend: str, token_auth: bool, token_path: str) -> dict[str, str]:
    """Ray's token authentication in the environment of every Ray process and client (hosts path and
    SLURM job alike): the mode and the path of the 0600 token file, never the token. Without the ray
    backend, nothing; with token auth off, ``disabled`` said explicitly (Ray 2.60's ``ray start``
    turns token auth on by itself when it finds ~/.ray/auth_token)."""
    if backend != "ray":
        return {}
    if token_auth:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}
    return {"RAY_AUTH_MODE": "disabled"}


def parse_systemctl_show(text: str) -> list[dict[str, str]]:
    """``systemctl show -p A -p B unit1 unit2`` prints one block of ``KEY=value`` lines per unit,
    blocks separated by an empty line, in the order the units were asked for."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def systemd_state(props: dict[str, str]) -> dict[str, Any]:
    """One unit's block -> {present, active, state, started_at, need_daemon_reload, restarts, fragment}.

    ``present``: systemd knows a unit file (LoadState loaded; the caller also checks that
    ``fragment``, the file, still exists: a deleted unit stays loaded until a daemon-reload);
    ``started_at``: when it last became active, 0 when it does not run now.
    """
    active = props.get("ActiveState", "") == "active"
    stamp = props.get("ActiveEnterTimestamp", "").strip().lstrip("@")
    started = int(stamp) if active and stamp.isdigit() else 0
    restarts = props.get("NRestarts", "0")
    return {
        "present": props.get("LoadState", "") == "loaded",
        "active": active,
        "state": props.get("ActiveState", "") or "unknown",
        "started_at": started,
        "need_daemon_reload": props.get("NeedDaemonReload", "no") == "yes",
        "restarts": int(restarts) if restarts.isdigit() else 0,
        "fragment": props.get("FragmentPath", ""),
    }


def iso_to_epoch(value: str) -> int:
    """Docker's ``2026-11-30T07:20:00.123456789Z`` (or with an offset) -> whole seconds, 0 if unparsable."""
    m = _ISO.match((value or "").strip())
    if not m or m.group(1).startswith("0001-"):
        return 0
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    zone = m.group(2)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        t -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return t


def parse_docker_inspect(text: str) -> dict[str, dict[str, Any]]:
    """``docker inspect NAME...`` JSON (only the containers that exist) -> name -> state."""
    try:
        items = json.loads(text or "[]")
    except ValueError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for item in items if isinstance(items, list) else []:
        name = str(item.get("Name", "")).lstrip("/")
        st = item.get("State") or {}
        running = bool(st.get("Running"))
        found[name] = {
            "present": True,
            "active": running,
            "state": st.get("Status", "") or "unknown",
            "started_at": iso_to_epoch(st.get("StartedAt", "")) if running else 0,
            "need_daemon_reload": False,
            "restarts": int(item.get("RestartCount") or 0),
        }
    return found


def absent_state() -> dict[str, Any]:
    return {
        "present": False,
        "active": False,
        "state": "absent",
        "started_at": 0,
        "need_daemon_reload": False,
        "restarts": 0,
    }


def drift_reason(name: str, state: dict[str, Any], mtimes: dict[str, float]) -> str | None:
    """Why the running ``name`` is on older settings than its files, or None.

    A file changed after the unit started (whole seconds, as systemd reports them), or systemd
    itself says the unit file changed since it was loaded.
    """
    if not state.get("active") or not state.get("started_at"):
        return None
    newer = sorted(path for path, mtime in mtimes.items() if int(mtime) > int(state["started_at"]))
    if newer:
        return "%s changed after %s started" % (", ".join(newer), name)
    if state.get("need_daemon_reload"):
        return "the %s unit file changed on disk since systemd loaded it" % name
    return None


def unit_report(
    runtime: str, units: list[dict[str, Any]], states: dict[str, dict[str, Any]], mtimes: dict[str, float]
) -> dict[str, Any]:
    """What the unit_state module returns: every unit's state and files, and ``restart``:
    {unit: reason} for the running units whose files changed after they started."""
    out: dict[str, Any] = {}
    restart: dict[str, str] = {}
    for unit in units:
        name = unit["name"]
        st = dict(states.get(name) or absent_state())
        files = {p: mtimes.get(p, 0.0) for p in unit.get("files") or []}
        st["files_changed_at"] = int(max(files.values(), default=0))
        reason = drift_reason(name, st, {p: m for p, m in files.items() if m})
        st["drifted"] = reason is not None
        if reason:
            restart[name] = reason
        out[name] = st
    return {
        "runtime": runtime,
        "units": out,
        "restart": restart,
        "started_at": {n: s["started_at"] for n, s in out.items()},
        "restarts": {n: s.get("restarts", 0) for n, s in out.items()},
    }


def cluster_gpus(nodes: list[Any]) -> int:
    """GPUs the whole group announces to Ray: per node, what the node noted in this run
    (``multinode_node_gpus``), else the inventory's ``multinode_ray_num_gpus``, else its GPU count
    fact, else 0. A node that does not answer still counts with what the inventory says."""
    total = 0
    for hv in nodes:
        value = None
        for key in ("multinode_node_gpus", "multinode_ray_num_gpus"):
            if key in hv and hv[key] not in (None, ""):
                value = hv[key]
                break
        if value is None:
            facts = hv.get("ansible_facts", {})
            value = ((facts or {}).get("multinode_gpu") or {}).get("count", 0)
        try:
            total += int(value)
        except (TypeError, ValueError):
            continue
    return total


def stale_members(
    started: dict[str, dict[str, int]],
    head: str,
    unit: str = "vllm",
    restarts: dict[str, dict[str, int]] | None = None,
    spread: int = 0,
) -> list[str]:
    """Members that started after ``unit`` on ``head`` ("host unit" strings, inventory order).

    ``started``: host -> {unit: start time}; empty when ``unit`` does not run on the head.
    ``unit`` on the other nodes (mp: one task starts every node's vLLM) may start up to ``spread``
    seconds after the head's and count as the same start, unless ``restarts`` (host -> {unit: restarts
    by systemd or Docker on their own since the last asked-for start}) says it restarted on its own.
    A restart of the group stops each node's vLLM first, and a stop can take up to the unit's stop
    timeout, so the spread must cover it. The other members (Ray) count whenever they started later,
    and also when they started in the same second: start times are whole seconds, so the order of two
    starts within one second is unknown, and a vLLM that started before its member hangs (systemd
    restarted vLLM and a worker's Ray 0.23 s apart, vLLM first, in a CI run's fault 4) where one
    restart of vLLM too many costs only its start.
    """
    ref = int((started.get(head) or {}).get(unit) or 0)
    if ref <= 0:
        return []

    def later(host: str, name: str, t: int) -> bool:
        if host == head and name == unit:
            return False
        if name != unit:
            return t >= ref
        if t <= ref:
            return False
        if t > ref + max(int(spread), 0):
            return True
        return restarts is not None and int((restarts.get(host) or {}).get(name) or 0) > 0

    return [
        "%s %s" % (host, name)
        for host, units in started.items()
        for name, t in (units or {}).items()
        if later(host, name, int(t or 0))
    ]


_STALE_WHY = {
    "native": (
        " unit changed on disk since it started (its unit or environment file; an interrupted run?):"
        " run the phase again"
    ),
    "docker": " container: its secrets file changed since it started (an interrupted run?): run the phase again",
}


def parse_shm(df_stdout: str | dict[str, Any], need: int, error: str = "") -> dict[str, Any]:
    """``df --block-size=1 --output=size,used,avail /dev/shm`` -> size, used, free, need, full.

    Or node_setup's ``shm`` (a mapping of size, used and avail in bytes, or an error).
    """
    if isinstance(df_stdout, dict):
        usage = df_stdout
        if usage.get("error") or not all(isinstance(usage.get(k), int) for k in ("size", "used", "avail")):
            return {"error": str(usage.get("error") or error or "/dev/shm could not be read"), "full": False}
        free = int(usage["avail"])
        return {
            "size": int(usage["size"]),
            "used": int(usage["used"]),
            "free": free,
            "need": int(need),
            "full": free < int(need),
        }
    lines = (df_stdout or "").splitlines()
    fields = lines[1].split() if len(lines) > 1 else []
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return {"error": error or "df failed", "full": False}
    size, used, free = (int(f) for f in fields)
    return {"size": size, "used": used, "free": free, "need": int(need), "full": free < int(need)}


def node_status(
    host: str, runtime: str, report: dict[str, Any], expected: list[str], shm: dict[str, Any]
) -> dict[str, Any]:
    """One node of status.yml: what runs (unit -> state), and its problems in one sentence each.

    ``report``: the unit_state result; ``expected``: the units that should run on this node.
    """
    units = report.get("units") or {}
    processes = {name: u.get("state", "absent") for name, u in units.items()}
    running = [n for n, st in processes.items() if st in ("active", "running")]
    problems = ["%s: %s is %s" % (host, n, processes.get(n, "absent")) for n in expected if n not in running]
    stale = [
        n for n in expected if (units.get(n) or {}).get("drifted") or (units.get(n) or {}).get("need_daemon_reload")
    ]
    problems += ["%s: the %s%s" % (host, n, _STALE_WHY.get(runtime, _STALE_WHY["native"])) for n in stale]
    if shm.get("full"):
        problems.append(
            "%s: /dev/shm has %d MiB free of %d MiB, Ray and vLLM need %d MiB (Ray object store + 256 MiB for vLLM):"
            " remove what fills it (du -sh /dev/shm/*) or enlarge it"
            % (host, shm["free"] // 1048576, shm["size"] // 1048576, shm["need"] // 1048576)
        )
    return {"processes": processes, "shm": shm, "problems": problems}


def cluster_status(
    runtime: str,
    backend: str,
    hosts: list[str],
    nodes: dict[str, dict[str, Any]],
    ray: dict[str, Any],
    health: dict[str, Any],
    models: dict[str, Any],
    endpoint: str,
) -> dict[str, Any]:
    """The group's status: every node (unreachable ones too), Ray's and vLLM's view, the problems.

    ``nodes``: host -> that node's status (a host missing here did not answer); ``ray``, ``health``
    and ``models``: the head's ray_cluster_info, /health and /v1/models results ({} when not asked).
    """
    all_nodes = {h: nodes.get(h) or {"reachable": False} for h in hosts}
    problems = ["%s: unreachable" % h for h in hosts if not nodes.get(h)]
    for h in hosts:
        problems += list((nodes.get(h) or {}).get("problems") or [])
    if backend == "ray" and not ray.get("ok"):
        problems.append("Ray: %s" % (ray.get("msg") or "not queried"))
    status = health.get("status", -1)
    if status != 200:
        problems.append("vLLM: /health answered %s" % status)
    data = (models.get("json") or {}).get("data") or [] if isinstance(models.get("json"), dict) else []
    return {
        "runtime": runtime,
        "backend": backend,
        "healthy": not problems,
        "problems": problems,
        "nodes": all_nodes,
        "ray": {
            "msg": ray.get("msg", "n/a"),
            "node_ips": ray.get("node_ips", []),
            "gpus": ray.get("gpus", 0),
            "dead_count": ray.get("dead_count", 0),
            "object_store_bytes": ray.get("object_store_bytes", 0),
            "object_store_used_bytes": ray.get("object_store_used_bytes"),
        },
        "vllm": {"endpoint": endpoint, "health": status, "models": [m.get("id") for m in data if isinstance(m, dict)]},
    }
