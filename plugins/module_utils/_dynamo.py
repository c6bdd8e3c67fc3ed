# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVIDIA Dynamo stack's rules (seed 004): etcd + NATS on the head, the frontend on the head,
vLLM workers (aggregated, or prefill and decode groups) across the nodes.

Pure functions, unit-tested: the checks of the layout variables (each message names the variable,
its value and the fix), which worker units each node runs (unit name, disaggregation mode, TP, the
GPUs it sees), a worker's command line per engine (Dynamo's ``dynamo.vllm`` or its simulated
``dynamo.mocker``), and what etcd says is registered (the ``v1/instances/...`` keys read through
etcd's v3 JSON gateway) against what the plan expects.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STACKS = ("vllm", "dynamo")
LAYOUTS = ("aggregated", "disaggregated")
#: ``python -m dynamo.<engine>``: the real vLLM worker, or Dynamo's simulated engine (no GPU).
ENGINES = ("vllm", "mocker")
ROUTER_MODES = ("round-robin", "random", "power-of-two", "kv", "direct", "least-loaded")
#: Worker roles (Dynamo's --disaggregation-mode) and the Dynamo component each registers as.
MODES = ("agg", "prefill", "decode")
COMPONENT = {"agg": "backend", "decode": "backend", "prefill": "prefill"}
UNIT_PREFIX = "dynamo-worker-"
INSTANCES_PREFIX = "v1/instances/"
MAX_PORT = 65535
#: The KV transfer vLLM's disaggregated workers need (dynamo.vllm refuses a prefill worker without one).
NIXL_KV_TRANSFER = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}

_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


class DynamoError(ValueError):
    """A layout the plan cannot be built from; the message names the variable and the fix."""


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _hosts(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        return None
    return [str(v) for v in value]


def layout_problems(cfg: Mapping[str, Any], hosts: Sequence[str], gpus_per_node: Any = None) -> list[str]:
    """One sentence per bad value of the Dynamo variables in ``cfg`` (name -> value), for the
    cluster ``hosts`` (the head first). Empty when the stack is vllm or everything is valid.

    ``gpus_per_node``: the GPUs each node has (validate's assumption); None skips that check.
    """
    problems: list[str] = []
    stack = cfg.get("multinode_stack", "vllm")
    if stack not in STACKS:
        return [
            f"multinode_stack={stack!r}: use one of {', '.join(STACKS)} "
            "(vllm: Ray + vllm serve; dynamo: etcd + NATS, the frontend, workers)"
        ]
    if stack != "dynamo":
        return []
    if cfg.get("multinode_runtime", "native") != "native":
        problems.append(
            f"multinode_runtime={cfg.get('multinode_runtime')!r}: the dynamo stack runs as systemd units (native); "
            "set multinode_runtime: native"
        )
    for var, choices in (
        ("dynamo_serve_layout", LAYOUTS),
        ("dynamo_serve_engine", ENGINES),
        ("dynamo_serve_router_mode", ROUTER_MODES),
    ):
        if cfg.get(var) not in choices:
            problems.append(f"{var}={cfg.get(var)!r}: use one of {', '.join(choices)}")

    ports: dict[str, int] = {}
    for var in (
        "multinode_etcd_port",
        "multinode_nats_port",
        "multinode_nats_monitor_port",
        "dynamo_plane_etcd_peer_port",
        "multinode_vllm_port",
    ):
        if var not in cfg:
            continue
        port = _int(cfg[var])
        if port is None or not 1 <= port <= MAX_PORT:
            problems.append(f"{var}={cfg[var]!r}: use an integer port in 1-{MAX_PORT}")
        else:
            ports[var] = port
    seen: dict[int, str] = {}
    for var, port in ports.items():
        if port in seen:
            problems.append(
                f"{seen[port]} and {var} are both {port}: etcd, NATS, its monitoring port and the frontend "
                "(multinode_vllm_port) all listen on the head; give each its own port"
            )
        else:
            seen[port] = var

    counts: dict[str, int] = {}
    for var in (
        "dynamo_serve_workers_per_node",
        "dynamo_serve_tensor_parallel_size",
        "dynamo_serve_prefill_tensor_parallel_size",
        "dynamo_serve_decode_tensor_parallel_size",
    ):
        n = _int(cfg.get(var))
        if n is None or n < 1:
            problems.append(f"{var}={cfg.get(var)!r}: use an integer of 1 or more")
        else:
            counts[var] = n

    members = list(hosts)
    layout = cfg.get("dynamo_serve_layout")
    if layout == "disaggregated":
        for var, what in (("dynamo_serve_prefill_hosts", "prefill"), ("dynamo_serve_decode_hosts", "decode")):
            listed = _hosts(cfg.get(var))
            if listed is None:
                problems.append(
                    f"{var}={cfg.get(var)!r}: use a list of inventory host names, "
                    f"e.g. [{members[-1] if members else 'node2'}]"
                )
                continue
            if not listed:
                problems.append(
                    f"{var} is empty: the disaggregated layout needs at least one {what} host "
                    f"(one of {', '.join(members) or 'the cluster hosts'}), or set dynamo_serve_layout: aggregated"
                )
            unknown = [h for h in listed if h not in members]
            if unknown:
                problems.append(
                    f"{var} names {', '.join(unknown)}, not in the cluster ({', '.join(members) or 'no hosts'}): "
                    "list inventory host names of groups ray_head/ray_workers"
                )
            if len(set(listed)) != len(listed):
                problems.append(
                    f"{var} lists a host twice ({', '.join(listed)}): "
                    "use dynamo_serve_workers_per_node for more workers per node"
                )

    gpus = _int(gpus_per_node)
    if gpus is not None and not problems and cfg.get("dynamo_serve_engine") == "vllm":
        plan = worker_plan(cfg, members)
        for host, workers in plan.items():
            need = sum(w["tp"] for w in workers)
            if need > gpus:
                parts = " + ".join(f"{w['mode']} TP {w['tp']}" for w in workers)
                problems.append(
                    f"{host} would run {len(workers)} workers needing {need} GPUs ({parts}) but has {gpus}: lower "
                    "dynamo_serve_workers_per_node or the TP (dynamo_serve_*tensor_parallel_size), "
                    "or move a role to another host"
                )
    if cfg.get("multinode_api_open") is not True and str(cfg.get("multinode_api_open")).lower() != "true":
        problems.append(
            "multinode_stack=dynamo with multinode_api_open false: the Dynamo frontend takes no API key, so its port "
            'answers anyone the firewall lets in. Fix: set multinode_api_open: true (and multinode_api_key: "") and '
            "limit cluster_firewall_api_clients to the clients' addresses"
        )
    return problems


def worker_groups(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The worker groups of the layout, each with the variable of its TP: what the planner sizes.

    aggregated: ``[{"group": "agg", "var": "dynamo_serve_tensor_parallel_size", "tp": N}]``;
    disaggregated: the prefill and the decode group (a group without hosts is left out). Every
    worker of a group is one replica of the model on ``tp`` GPUs of one node.
    """
    if cfg.get("dynamo_serve_layout") == "disaggregated":
        pairs = [
            ("prefill", "dynamo_serve_prefill_hosts", "dynamo_serve_prefill_tensor_parallel_size"),
            ("decode", "dynamo_serve_decode_hosts", "dynamo_serve_decode_tensor_parallel_size"),
        ]
        return [
            {"group": group, "var": var, "tp": _int(cfg.get(var)) or 1}
            for group, hosts_var, var in pairs
            if _hosts(cfg.get(hosts_var))
        ]
    var = "dynamo_serve_tensor_parallel_size"
    return [{"group": "agg", "var": var, "tp": _int(cfg.get(var)) or 1}]


def worker_plan(cfg: Mapping[str, Any], hosts: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """host -> the workers it runs: ``{"unit", "mode", "tp", "devices"}`` (devices: the
    CUDA_VISIBLE_DEVICES of the worker, GPUs handed out in order on each node).

    aggregated: every cluster host runs ``dynamo_serve_workers_per_node`` agg workers of
    ``dynamo_serve_tensor_parallel_size``; disaggregated: the prefill hosts run prefill workers,
    the decode hosts decode workers, each group with its own TP. Hosts with no role get [].
    """
    per_node = _int(cfg.get("dynamo_serve_workers_per_node")) or 1
    plan: dict[str, list[dict[str, Any]]] = {h: [] for h in hosts}
    if cfg.get("dynamo_serve_layout") == "disaggregated":
        groups = [
            (
                "prefill",
                _hosts(cfg.get("dynamo_serve_prefill_hosts")) or [],
                "dynamo_serve_prefill_tensor_parallel_size",
            ),
            ("decode", _hosts(cfg.get("dynamo_serve_decode_hosts")) or [], "dynamo_serve_decode_tensor_parallel_size"),
        ]
    else:
        groups = [("agg", list(hosts), "dynamo_serve_tensor_parallel_size")]
    for mode, members, tp_var in groups:
        tp = _int(cfg.get(tp_var)) or 1
        for host in members:
            if host not in plan:
                raise DynamoError(
                    f"{host} is not a cluster host ({', '.join(hosts)}): fix the dynamo_serve_*_hosts lists"
                )
            for i in range(per_node):
                first = sum(w["tp"] for w in plan[host])
                plan[host].append(
                    {
                        "unit": f"{UNIT_PREFIX}{mode}-{i}",
                        "mode": mode,
                        "tp": tp,
                        "devices": ",".join(str(d) for d in range(first, first + tp)),
                    }
                )
    return plan


def worker_argv(
    engine: str,
    mode: str,
    python: str,
    model: str,
    served_model_name: str,
    tp: int = 1,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of one worker unit (``python -m dynamo.<engine>``)."""
    if engine not in ENGINES:
        raise DynamoError(f"dynamo_serve_engine={engine!r}: use one of {', '.join(ENGINES)}")
    if mode not in MODES:
        raise DynamoError(f"worker mode {mode!r}: use one of {', '.join(MODES)}")
    if engine == "mocker":
        argv = [python, "-m", "dynamo.mocker", "--model-path", model, "--model-name", served_model_name]
    else:
        argv = [
            python,
            "-m",
            "dynamo.vllm",
            "--model",
            model,
            "--served-model-name",
            served_model_name,
            "--tensor-parallel-size",
            str(tp),
        ]
        if mode != "agg":
            argv += ["--kv-transfer-config", json.dumps(NIXL_KV_TRANSFER, separators=(",", ":"))]
    argv += ["--disaggregation-mode", mode]
    return argv + [str(a) for a in extra_args]


def frontend_argv(
    python: str, http_host: str, http_port: int, router_mode: str, extra_args: Sequence[str] = ()
) -> list[str]:
    """The frontend unit's command line (OpenAI HTTP server, preprocessor and router)."""
    if router_mode not in ROUTER_MODES:
        raise DynamoError(f"dynamo_serve_router_mode={router_mode!r}: use one of {', '.join(ROUTER_MODES)}")
    return [
        python,
        "-m",
        "dynamo.frontend",
        "--http-host",
        http_host,
        "--http-port",
        str(http_port),
        "--router-mode",
        router_mode,
        "--discovery-backend",
        "etcd",
    ] + [str(a) for a in extra_args]


def runtime_env(
    node_ip: str, head_ip: str, etcd_port: int, nats_port: int, namespace: str = "dynamo"
) -> dict[str, str]:
    """Environment every Dynamo process gets: where the plane is (the head's control IP) and the
    address it advertises (its own control IP, never an auto-detected one)."""
    for what, ip in (("node", node_ip), ("head", head_ip)):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise DynamoError(
                f"the {what}'s control IP {ip!r} is not an IP address: check the fabric facts (preflight)"
            ) from None
    return {
        "ETCD_ENDPOINTS": f"http://{head_ip}:{etcd_port}",
        "NATS_SERVER": f"nats://{head_ip}:{nats_port}",
        "DYN_NAMESPACE": namespace,
        "DYN_TCP_RPC_HOST": node_ip,
        "DYN_TCP_RESPONSE_STREAM_HOST": node_ip,
        "DYN_EVENT_PLANE_HOST": node_ip,
        "DYN_SYSTEM_HOST": node_ip,
    }


def etcd_range_body(prefix: str = INSTANCES_PREFIX) -> dict[str, str]:
    """The JSON body of etcd's ``POST /v3/kv/range`` for every key under ``prefix``."""
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])
    return {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()}


def parse_etcd_range(doc: Any) -> list[dict[str, Any]]:
    """etcd's range answer (``/v3/kv/range`` JSON, or ``etcdctl get --prefix -w json``) -> the keys:
    ``{"key", "value"}`` with the value parsed as JSON when it is JSON."""
    if isinstance(doc, (str, bytes)):
        doc = json.loads(doc) if doc else {}
    if not isinstance(doc, Mapping):
        raise DynamoError(f"not an etcd range answer: {str(doc)[:200]}")
    found = []
    for kv in doc.get("kvs") or []:
        key = base64.b64decode(kv.get("key", "")).decode(errors="replace")
        raw = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        found.append({"key": key, "value": value, "lease": str(kv.get("lease", "0"))})
    return found


def registrations(kvs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The workers registered with the plane: one ``{"namespace", "component", "endpoint",
    "instance", "host"}`` per ``v1/instances/<ns>/<component>/<endpoint>/<id>`` key; host is the
    first IPv4 address in the value (the transport the instance advertises), "" when none."""
    regs = []
    for kv in kvs:
        key = str(kv.get("key", ""))
        if not key.startswith(INSTANCES_PREFIX):
            continue
        parts = key[len(INSTANCES_PREFIX) :].split("/")
        if len(parts) < 4:
            continue
        value = kv.get("value")
        text = value if isinstance(value, str) else json.dumps(value)
        ip = next((m for m in _IPV4.findall(text) if _is_ip(m)), "")
        regs.append(
            {
                "namespace": parts[0],
                "component": parts[1],
                "endpoint": parts[2],
                "instance": "/".join(parts[3:]),
                "host": ip,
            }
        )
    return regs


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def registration_report(
    plan: Mapping[str, Sequence[Mapping[str, Any]]],
    node_ips: Mapping[str, str],
    regs: Iterable[Mapping[str, Any]],
    namespace: str = "dynamo",
    endpoint: str = "generate",
) -> dict[str, Any]:
    """What the plan expects against what etcd holds, per host: ``{"hosts": {host: {component:
    {"expected", "registered"}}}, "missing": [sentences], "ok": bool}``. A worker counts on the host
    whose control IP it advertises."""
    by_ip = {ip: host for host, ip in node_ips.items()}
    seen: dict[str, dict[str, int]] = {}
    for reg in regs:
        if reg.get("namespace") != namespace or reg.get("endpoint") != endpoint:
            continue
        host = by_ip.get(str(reg.get("host", "")), "")
        comp = str(reg.get("component"))
        seen.setdefault(host, {}).setdefault(comp, 0)
        seen[host][comp] += 1
    hosts: dict[str, dict[str, dict[str, int]]] = {}
    missing = []
    for host, workers in plan.items():
        want: dict[str, int] = {}
        for w in workers:
            comp = COMPONENT[w["mode"]]
            want[comp] = want.get(comp, 0) + 1
        have = seen.get(host, {})
        hosts[host] = {c: {"expected": n, "registered": have.get(c, 0)} for c, n in sorted(want.items())}
        for comp, n in sorted(want.items()):
            if have.get(comp, 0) < n:
                missing.append(
                    f"{host}: {have.get(comp, 0)} of {n} {comp} worker(s) registered in etcd "
                    f"({namespace}/{comp}/{endpoint} advertising {node_ips.get(host, '?')})"
                )
    return {"hosts": hosts, "missing": missing, "ok": not missing}


def stale_units(present: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """Worker units found on a node (``dynamo-worker-*.service`` file names or unit names) that its
    plan no longer has (a layout change): stop and remove them."""
    want = {w[: -len(".service")] if w.endswith(".service") else w for w in wanted}
    found = []
    for name in present:
        base = str(name).rsplit("/", 1)[-1]
        unit = base[: -len(".service")] if base.endswith(".service") else base
        if unit.startswith(UNIT_PREFIX) and unit not in want:
            found.append(unit)
    return sorted(set(found))


#: The head's own units (the plane and the frontend), for status.
HEAD_UNITS = ("dynamo-etcd", "dynamo-nats", "dynamo-frontend")


def node_units(workers: Iterable[Mapping[str, Any]], is_head: bool) -> list[dict[str, str]]:
    """The units a node should run, as unit_state wants them: the head's plane and frontend, then
    its workers."""
    names = list(HEAD_UNITS) if is_head else []
    return [{"name": n} for n in names + [str(w["unit"]) for w in workers]]


def status_problems(status: Mapping[str, Any], hosts: Sequence[str]) -> list[str]:
    """What is wrong with a running Dynamo stack, one sentence each (``multinode-vllm status``'s
    ``problems``): the plane's health, every unit of every node that is not active (a node with no
    unit state did not answer), then the workers the plan expects that etcd does not hold."""
    problems = []
    if not status.get("etcd_healthy"):
        problems.append("etcd: /health on the head did not answer healthy (the plane: dynamo-etcd on the head)")
    if not status.get("nats_healthy"):
        problems.append("NATS: /healthz on the head did not answer ok (the plane: dynamo-nats on the head)")
    units = status.get("units") or {}
    for host in hosts:
        node = units.get(host) or {}
        if not node:
            problems.append(f"{host}: no unit state was read (the node did not answer)")
            continue
        for unit, state in sorted(node.items()):
            if not (state or {}).get("active"):
                problems.append(f"{host}: {unit} is {(state or {}).get('state') or 'not active'}")
    problems.extend(str(m) for m in status.get("missing") or [])
    return problems
