# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The validate phase's checks, in order, as one pure function. Stdlib only (plus the sibling rules).

``validate(inputs)`` runs every check of layer 1 (the inventory's shape, the variables of every
host, the API key, the cluster's shape, the Dynamo layout and the model plan) and stops at the first
that fails: ``{"failed": True, "check": <what stopped the run>, "msg": <what is wrong, the variable
and the fix>}``; else ``{"failed": False, "report": [lines to show], "plan": {...} or None,
"dynamo_plans": [...]}``. The action plugin ``multinode.vllm.validate_cluster`` reads the inventory
once (``Inputs``) and calls it; nothing here reads Ansible's variables or contacts a node.

The checks (``check`` names; the bad-input suite, tests/bad_inputs.py, names the one each case must
stop at):

1. the inventory: no cluster host, unknown head or worker group, not exactly one head, the head also
   a worker, vllm_cluster differing from head + workers, two hosts on one SSH address, a host name
   that resolves to nothing;
2. the variables against their rules (plugins/module_utils/_checks.py), one check per kind;
3. the API key, the API port against the internal ports, the cluster-wide settings, the GPUs per
   node, DP x TP x PP against the GPUs (``_planner.parallel_shape``), the Dynamo layout;
4. the model: its config.json, the plan (``_planner.plan``), the Dynamo worker groups' plans.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._checks import cluster_mismatches, host_values, invalid_vars, port_clashes
from ._cluster import duplicate_addresses, to_int, unknown_names, unresolvable
from ._dynamo import layout_problems, worker_groups
from ._firewall import port_overlaps
from ._planner import PARALLEL_NAMES, PlanError, parallel_shape, plan

#: Inventory variables that give a host's SSH address (duplicates and resolution).
ADDRESS_VARS = ("ansible_host", "ansible_port", "ansible_connection")
#: The firewall's port sets the API port must stay out of (the head's values).
FIREWALL_SETS = ("cluster_firewall_ray_ports", "cluster_firewall_protected_ports", "cluster_firewall_loopback_ports")
#: The values Jinja's ``in`` test of the role took as "the API is open".
_OPEN = (True, "true", "True", "TRUE", "yes", "Yes", "on", "y", 1, "1")
_TRUE = ("true", "yes", "on", "y", "1", "t")
_INT_RE = re.compile(r"^[0-9]+$")
_GIB_RE = re.compile(r"^[0-9]+([.][0-9]+)?$")

#: The planner names its own parameters; the inventory variable to change for each.
PLANNER_VARS = {
    "model": "validate_model_config_path / validate_model_config",
    "gpu_memory_bytes": "validate_gpu_memory_gib",
    "gpu_memory_utilization": "vllm_serve_gpu_memory_utilization",
    "max_model_len": "vllm_serve_max_model_len",
    "dtype": "vllm_serve_dtype",
    "tensor_parallel_size": "vllm_serve_tensor_parallel_size",
    "pipeline_parallel_size": "vllm_serve_pipeline_parallel_size",
    "data_parallel_size": "vllm_serve_data_parallel_size",
    "enable_expert_parallel": "vllm_serve_enable_expert_parallel",
    "backend": "multinode_backend",
}

#: The per-kind checks of the variables, in order: (problem check, name, message head, fix, tail).
_KIND_CHECKS: tuple[tuple[str, str, str, str, str], ...] = (
    ("port", "Stop if a port is not in 1-65535", "Not a port: ", "to an integer in 1-65535 (no quotes, no unit).", ""),
    (
        "choice",
        "Stop if a runtime, backend, dtype or unit name is unknown",
        "Unknown value: ",
        "to one of the values listed.",
        "",
    ),
    (
        "number",
        "Stop if a count, size or timeout is not a valid integer",
        "Not a valid integer: ",
        "to a whole number in the range given (no quotes, no unit: 2147483648, not 2GB).",
        "",
    ),
    ("fraction", "Stop if the GPU memory utilisation is not in (0, 1]", "", "", ""),
    ("bool", "Stop if a switch is not true or false", "Not a boolean: ", "to true or false.", ""),
    (
        "shape",
        "Stop if a list or mapping has the wrong shape",
        "Wrong shape: ",
        "as shown (extra arguments are a YAML list, one item per argument; environments are a mapping).",
        "write",
    ),
    (
        "path",
        "Stop if a path is not absolute",
        "Not an absolute path: ",
        "to an absolute path: it is used on every node, in unit files and container mounts, where a relative "
        "path means nothing.",
        "",
    ),
    ("name", "Stop if a name is empty or malformed", "Bad name: ", "as shown.", ""),
    ("secret", "Stop if a secret is not a string", "", "", ""),
)


@dataclass
class Inputs:
    """What the checks read: the inventory as the controller sees it, and the validate_* settings."""

    groups: Mapping[str, Sequence[str]]
    #: host -> the variables it defines (of those the checks read), templated; undefined ones left out
    hostvars: Mapping[str, Mapping[str, Any]]
    #: host -> every variable name it defines (misspelt names)
    names: Mapping[str, Sequence[str]]
    #: [{var, hosts, missing}]: variables that are templates naming an undefined variable
    undefined: Sequence[Mapping[str, Any]]
    rules: Mapping[str, Mapping[str, Any]]
    defaults: Mapping[str, Any]
    specs: Sequence[Mapping[str, Any]] = ()
    prefixes: Sequence[str] = ()
    head_group: str = "ray_head"
    worker_group: str = "ray_workers"
    gpus_per_node: Any = 8
    gpu_memory_gib: Any = 80
    model_config_path: str = ""
    model_config: Any = field(default_factory=dict)
    require_api_key: Any = False
    ignore_plan: Any = False
    dynamo_vars: Sequence[str] = ()
    resolves: Callable[[str], bool] = lambda _name: True
    #: the SLURM job's shape (the slurm role): plan only, with these inputs (see ``plan_model``)
    plan_only: Mapping[str, Any] | None = None


class Stop(Exception):
    """A check failed: ``check`` names it, the message says what is wrong and the fix."""

    def __init__(self, check: str, msg: str) -> None:
        super().__init__(msg)
        self.check = check
        self.msg = msg


def to_bool(value: Any) -> bool:
    """Ansible's ``bool`` filter."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return value == 1


def to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _join(items: Sequence[Any], sep: str = ", ") -> str:
    return sep.join(str(i) for i in items)


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _gib(nbytes: Any) -> str:
    return str(round(float(nbytes) / 2**30, 1))


def _truncate(text: str, length: int = 300) -> str:
    """Jinja's ``truncate``: at a word boundary, with "..." (5 characters of leeway)."""
    if len(text) <= length + 5:
        return text
    return text[: length - 3].rsplit(" ", 1)[0] + "..."


class _Run:
    """One validation: the inputs, what the checks derive from them, and the report lines."""

    def __init__(self, inputs: Inputs) -> None:
        self.i = inputs
        self.report: list[str] = []
        self.plan: dict[str, Any] | None = None
        self.dynamo_plans: list[dict[str, Any]] = []
        g = inputs.groups
        self.heads = list(g.get(inputs.head_group) or [])
        self.workers = list(g.get(inputs.worker_group) or [])
        self.cluster = list(g.get("vllm_cluster") or [])
        logins = list(g.get("slurm_login") or [])
        self.slurm = bool(logins) and not (self.cluster + self.heads + self.workers)
        self.hosts = _unique(logins if self.slurm else self.cluster + self.heads + self.workers)
        self.head = logins[0] if self.slurm else (self.heads[0] if self.heads else "")
        self.ignore = to_bool(inputs.ignore_plan)

    # --- reading ----------------------------------------------------------------------------------

    def head_var(self, name: str, fallback: Any = None) -> Any:
        """The head's value of ``name``, else ``fallback``."""
        return (self.i.hostvars.get(self.head) or {}).get(name, fallback)

    def head_default(self, name: str) -> Any:
        return self.head_var(name, self.i.defaults.get(name))

    @property
    def node_gpus(self) -> int:
        return to_int(self.head_var("multinode_ray_num_gpus", self.i.gpus_per_node))

    def _optional_int(self, name: str, unset: Any) -> Any:
        own = self.i.hostvars.get(self.head) or {}
        return to_int(own[name]) if name in own else unset

    # --- 1. the inventory -------------------------------------------------------------------------

    def inventory(self) -> None:
        i, hg, wg = self.i, self.i.head_group, self.i.worker_group
        group_names = _join([n for n in i.groups if n not in ("all", "ungrouped")])
        if not self.hosts:
            raise Stop(
                "Stop if the inventory holds no cluster host",
                f"The inventory holds no host in vllm_cluster, {hg} or {wg} (its groups: {group_names or 'none'}). "
                f"Fix: point -i at an inventory whose group vllm_cluster has the children {hg} (one host) and {wg} "
                "(see inventories/baremetal/hosts.yml); for the SLURM path, a group slurm_login with the host that "
                "runs sbatch (see inventories/slurm/hosts.yml).",
            )
        besides = [h for h in _unique(self.cluster) if h not in self.heads]
        if hg not in i.groups or (wg not in i.groups and besides):
            what = (
                f"multinode_head_group={hg} is no group of the inventory"
                if hg not in i.groups
                else f"multinode_worker_group={wg} is no group of the inventory, yet vllm_cluster holds "
                f"{_join(besides)} besides the head"
            )
            raise Stop(
                "Stop if multinode_head_group or multinode_worker_group names no inventory group",
                f"{what} (its groups: {group_names}). Fix: set multinode_head_group and multinode_worker_group "
                "to the inventory's head and worker groups (default ray_head and ray_workers), or rename the groups "
                "in the inventory.",
            )
        if len(self.heads) != 1:
            raise Stop(
                "Stop if the head group does not hold exactly one host",
                f"Group {hg} (multinode_head_group) holds {len(self.heads)} hosts ({_join(self.heads) or 'none'}); "
                "it must hold exactly one, the Ray head and API endpoint. "
                f"Fix: keep one host under {hg} in the inventory and move the others to {wg}.",
            )
        both = _unique([h for h in self.heads if h in self.workers])
        if both:
            raise Stop(
                "Stop if the head is also a worker",
                f"{_join(both)} is in both {hg} and {wg} (multinode_worker_group). Fix: remove the head from {wg}.",
            )
        members = self.heads + self.workers
        missing = _unique([h for h in members if h not in self.cluster])
        stray = _unique([h for h in self.cluster if h not in members])
        if missing or stray:
            raise Stop(
                "Stop if vllm_cluster and the head and worker groups differ",
                f"Group vllm_cluster must be exactly {hg} + {wg}: "
                f"missing from vllm_cluster: {_join(missing) or 'none'}; "
                f"in vllm_cluster but neither head nor worker: {_join(stray) or 'none'}. "
                f"Fix: make {hg} and {wg} the children of vllm_cluster (see inventories/baremetal/hosts.yml).",
            )
        addresses = {h: {k: v for k, v in (i.hostvars.get(h) or {}).items() if k in ADDRESS_VARS} for h in self.hosts}
        shared = duplicate_addresses(addresses)
        if shared:
            raise Stop(
                "Stop if two hosts share an address",
                f"ansible_host:ansible_port used by more than one host: {_join(shared, '; ')}. "
                "Fix: give every host its own ansible_host (a host listed twice would get two node ranks).",
            )
        nowhere = unresolvable(addresses, i.resolves)
        if nowhere:
            raise Stop(
                "Stop if a host name resolves to nothing",
                f"{_join(nowhere)}: no ansible_host and the name does not resolve on the controller (getent hosts). "
                "Fix: set ansible_host for these hosts, or add them to DNS or /etc/hosts.",
            )

    # --- 2. the variables -------------------------------------------------------------------------

    def variables(self) -> None:
        i = self.i
        rules = {k: dict(v) for k, v in i.rules.items()}
        own = {h: {k: v for k, v in (i.hostvars.get(h) or {}).items() if k in i.rules} for h in self.hosts}
        values = host_values(own, i.rules, i.defaults)
        problems = invalid_vars(values, rules)
        if i.undefined:
            u = list(i.undefined)
            raise Stop(
                "Stop if a variable is a template that names an undefined variable",
                "; ".join(f"{x['var']} on {_join(x['hosts'])} names {x['missing']}, which is undefined" for x in u)
                + f". Fix: define {_join(_unique([str(x['missing']) for x in u]))} (a vault file that was not loaded? "
                "run with --ask-vault-pass or --vault-password-file), or remove "
                f"{_join(_unique([str(x['var']) for x in u]))} from the inventory to use the default.",
            )
        for kind, name, head, fix, verb in _KIND_CHECKS[:1]:
            self._kind(problems, kind, name, head, fix, verb)
        clashes = port_clashes(values, rules)
        if clashes:
            raise Stop(
                "Stop if two services share a port",
                f"Ports clash on {_join(clashes, '; ')}: the services run on the same node and only one can listen on "
                "a port. Fix: give multinode_vllm_port, multinode_ray_port (ray backend), ray_head_dashboard_port (ray "
                "backend with the dashboard) and multinode_master_port (mp backend) different values.",
            )
        for kind, name, head, fix, verb in _KIND_CHECKS[1:]:
            self._kind(problems, kind, name, head, fix, verb)
        self.api(values)
        mismatches = cluster_mismatches(values, rules)
        if mismatches:
            raise Stop(
                "Stop if a cluster-wide setting differs between hosts",
                f"Not one value on every host: {_join([m['text'] for m in mismatches], '; ')}. Fix: set "
                f"{_join([m['var'] for m in mismatches])} once for the whole cluster (group_vars/all, or the same "
                "value in every group's vars); the nodes of one cluster must agree on it.",
            )

    def _kind(self, problems: list[dict[str, Any]], kind: str, name: str, head: str, fix: str, verb: str) -> None:
        mine = [p for p in problems if p["check"] == kind]
        if not mine:
            return
        texts = _join([p["text"] for p in mine], "; ")
        names = _join(_unique([p["var"] for p in mine]))
        if kind == "fraction":
            msg = (
                f"{texts}: vLLM takes a fraction of each GPU's memory. "
                "Fix: set vllm_serve_gpu_memory_utilization to a number above 0 and at most 1 (e.g. 0.9)."
            )
        elif kind == "secret":
            msg = (
                f'{texts}. Fix: quote {names} in the vault file (a key of digits only must be written "123456"); '
                "the value is never shown here."
            )
        else:
            msg = f"{head}{texts}. Fix: {verb or 'set'} {names} {fix}"
        raise Stop(name, msg)

    def api(self, values: Mapping[str, Mapping[str, Any]]) -> None:
        i = self.i
        open_api = [
            h for h, row in values.items() if "multinode_api_open" in row and row["multinode_api_open"] in _OPEN
        ]
        with_key = [h for h in open_api if not (values[h].get("multinode_api_key") or {}).get("empty")]
        port = self.head_default("multinode_vllm_port")
        if with_key or (to_bool(i.require_api_key) and open_api):
            if with_key:
                msg = (
                    f"multinode_api_open is true and multinode_api_key is set on {_join(with_key)}: one says serve "
                    "without a key, the other gives one. Fix: remove multinode_api_open (the key is used) or "
                    "multinode_api_key (the endpoint answers anyone)."
                )
            else:
                msg = (
                    f"multinode_api_open is true on {_join(open_api)} and validate_require_api_key is true: the "
                    f"endpoint would answer anyone who reaches port {port}. Fix: remove multinode_api_open (a key is "
                    "generated into multinode_credentials_dir/api-key, or set multinode_api_key from the vault)."
                )
            raise Stop("Stop if the API is open while a key is required, or open and given a key", msg)
        if open_api:
            self.report.append(
                f"WARNING: multinode_api_open is true on {_join(open_api)}: vLLM serves WITHOUT an API key, and "
                f"anyone who reaches port {port} can use it. Fix: remove multinode_api_open (a key is generated into "
                "multinode_credentials_dir/api-key) or set multinode_api_key."
            )
        if not self.head:
            return
        fw = {k: v for k, v in i.defaults.items() if k.startswith("cluster_firewall_")}
        fw.update({k: v for k, v in (i.hostvars.get(self.head) or {}).items() if k.startswith("cluster_firewall_")})
        internal: dict[str, Any] = {n: fw.get(n) for n in FIREWALL_SETS}
        dynamic = fw.get("cluster_firewall_dynamic_ports")
        internal["cluster_firewall_dynamic_ports"] = ["32768-65535"] if dynamic == "auto" else [dynamic]
        overlaps = port_overlaps(port, internal)
        if overlaps:
            raise Stop(
                "Stop if the API port is one the cluster uses internally",
                f"multinode_vllm_port {port} is a port the cluster uses internally: {_join(overlaps)}. The firewall "
                "opens the API port to cluster_firewall_api_clients (anyone by default), so it would open that "
                "internal port too, and Ray or NCCL may take it. Fix: set multinode_vllm_port to a free port outside "
                "those, e.g. 8000.",
            )

    # --- 3. the cluster's shape -------------------------------------------------------------------

    def shape(self) -> None:
        i = self.i
        gpus, gib = i.gpus_per_node, i.gpu_memory_gib
        if not (
            _INT_RE.match(str(gpus)) and to_int(gpus) > 0 and _GIB_RE.match(str(gib)) and to_float(gib) > 0
        ) or isinstance(gpus, bool):
            raise Stop(
                "Stop if the GPUs per node or their memory are not positive",
                f"validate_gpus_per_node={gpus}, validate_gpu_memory_gib={gib}: both must be positive numbers. "
                "Fix: set them to the GPUs of one node and the memory of one GPU in GiB.",
            )
        try:
            shape = parallel_shape(
                self._optional_int("vllm_serve_tensor_parallel_size", None) or None,
                self._optional_int("vllm_serve_pipeline_parallel_size", None) or None,
                len(_unique(self.heads + self.workers)),
                self.node_gpus,
                str(self.head_default("multinode_backend")),
                dp=self._optional_int("vllm_serve_data_parallel_size", 1) or 1,
            )
            problem = str(shape.get("problem") or "")
        except (PlanError, ValueError, TypeError) as exc:
            problem = str(exc)
        if problem and not self.ignore:
            raise Stop("Stop if tensor x pipeline parallel does not fit the GPUs of the cluster", problem)
        bad = layout_problems(self.dynamo_cfg, _unique(self.heads + self.workers), self.node_gpus)
        if bad:
            raise Stop("Stop if the Dynamo stack's variables are wrong", f"Dynamo stack: {_join(bad, '; ')}.")

    @functools.cached_property
    def dynamo_cfg(self) -> dict[str, Any]:
        """The head's values of the Dynamo variables, defaults filled in (read by three checks)."""
        rules: dict[str, dict[str, Any]] = {name: {} for name in self.i.dynamo_vars}
        own = {self.head: {k: v for k, v in (self.i.hostvars.get(self.head) or {}).items() if k in rules}}
        return host_values(own, rules, self.i.defaults).get(self.head, {})

    # --- 4. the model -----------------------------------------------------------------------------

    def model_config(self, model: str) -> Any:
        i = self.i
        candidate = os.path.realpath(str(i.model_config_path or model))
        if os.path.isdir(candidate):
            path = os.path.join(candidate, "config.json")
        elif os.path.isfile(candidate):
            path = candidate
        else:
            path = ""
        if i.model_config_path and not path:
            raise Stop(
                "Stop if validate_model_config_path names nothing on the controller",
                f"validate_model_config_path={i.model_config_path} is neither a config.json nor a directory holding "
                "one on the controller. Fix: point it at the model's config.json (tests/fixtures/models/* hold known "
                "ones), or leave it empty and set validate_model_config.",
            )
        if not path:
            config = i.model_config
        else:
            try:
                with open(path, encoding="utf-8") as fh:
                    config = json.loads(fh.read().rstrip())
            except (OSError, ValueError) as exc:
                raise Stop(
                    "Stop because the model configuration is not JSON",
                    f"{path} (validate_model_config_path={i.model_config_path or model}) is not a JSON object: "
                    f"{_truncate(str(exc))}. Fix: point validate_model_config_path at the model's config.json (as "
                    "downloaded with the weights), or set validate_model_config to its content.",
                ) from None
        if not isinstance(config, Mapping):
            raise Stop(
                "Stop if the model configuration is not a mapping",
                f"The model configuration (validate_model_config_path={i.model_config_path or model}) is "
                f"{type(config).__name__}, not a JSON object. Fix: point validate_model_config_path at the model's "
                "config.json, or set validate_model_config to its content.",
            )
        if not config and not self.ignore:
            raise Stop(
                "Stop if no model configuration is known",
                f"No config.json for multinode_model={model}: it is not a directory on the controller and nothing is "
                "downloaded here. Fix: set validate_model_config_path to its config.json, or validate_model_config to "
                "its content (num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads, torch_dtype, "
                "...); or validate_ignore_plan=true to go on without a plan.",
            )
        return dict(config)

    def plan_inputs(self) -> dict[str, Any]:
        """The plan's inputs: the cluster-wide settings, read from the head's variables."""
        if self.i.plan_only is not None:
            return dict(self.i.plan_only)
        max_len = to_int(self.head_default("vllm_serve_max_model_len"))
        return {
            "model": str(self.head_default("multinode_model")),
            "nodes": len(_unique(self.heads + self.workers)),
            "gpus_per_node": self.node_gpus,
            "tp": self._optional_int("vllm_serve_tensor_parallel_size", None),
            "pp": self._optional_int("vllm_serve_pipeline_parallel_size", None),
            "dp": self._optional_int("vllm_serve_data_parallel_size", 1),
            "ep": to_bool(self.head_default("vllm_serve_enable_expert_parallel")),
            "backend": self.head_default("multinode_backend"),
            "dtype": self.head_default("vllm_serve_dtype"),
            "max_model_len": max_len or None,
            "utilization": to_float(self.head_default("vllm_serve_gpu_memory_utilization")),
            "nodes_from": "the hosts of ray_head and ray_workers",
            "gpus_from": "validate_gpus_per_node",
        }

    def model(self) -> None:
        p = self.plan_inputs()
        config = self.model_config(p["model"])
        if not config:
            return
        gpu_bytes = int(to_float(self.i.gpu_memory_gib) * 1073741824)
        common = {
            "gpus_per_node": to_int(p["gpus_per_node"]),
            "gpu_memory_bytes": gpu_bytes,
            "gpu_memory_utilization": to_float(p["utilization"]),
            "max_model_len": p["max_model_len"],
            "dtype": p["dtype"],
        }
        try:
            self.plan = plan(
                config,
                names=PARALLEL_NAMES,
                nodes=to_int(p["nodes"]),
                backend=p["backend"],
                tensor_parallel_size=p["tp"],
                pipeline_parallel_size=p["pp"],
                data_parallel_size=to_int(p["dp"]),
                enable_expert_parallel=to_bool(p["ep"]),
                **common,
            )
        except (PlanError, TypeError) as exc:
            objection = str(exc) if isinstance(exc, PlanError) else f"vllm_plan: {exc}"
            if not self.ignore:
                word = re.match(r"^(\w+):", objection)
                var = word.group(1) if word else "model"
                names = {**PLANNER_VARS, "nodes": p["nodes_from"], "gpus_per_node": p["gpus_from"]}
                raise Stop(
                    "Stop with the planner's objection",
                    f"The planner refused the settings: {objection}. "
                    f"Fix: change {names.get(var, var)} in the inventory.",
                ) from None
            self.report.append(
                f"The planner refused the settings: {objection}. validate_ignore_plan=true: going on without a plan."
            )
        if self.plan is not None:
            self.report.append(plan_line(self.plan, to_int(p["nodes"]), to_int(p["gpus_per_node"])))
            if not self.plan["fits"] and not self.ignore:
                pl = self.plan
                raise Stop(
                    "Stop if the model does not fit",
                    f"The model {p['model']} {pl['reason']} (vllm_serve_data_parallel_size="
                    f"{pl.get('data_parallel_size', 1)} x TP {pl['tensor_parallel_size']} x PP "
                    f"{pl['pipeline_parallel_size']}, {_gib(pl['weight_bytes'])} GiB of weights, "
                    f"vllm_serve_gpu_memory_utilization={p['utilization']}, vllm_serve_max_model_len="
                    f"{pl['max_model_len']}, validate_gpu_memory_gib={self.i.gpu_memory_gib}). Fix: one of those, or "
                    "validate_ignore_plan=true to go on anyway.",
                )
        if self.i.plan_only is None and self.dynamo_cfg.get("multinode_stack", "vllm") == "dynamo":
            self.dynamo(config, common, p["model"])

    def dynamo(self, config: dict[str, Any], common: dict[str, Any], model: str) -> None:
        """Every worker of a Dynamo group is one replica on ``tp`` GPUs of one node: plan one per group."""
        for group in worker_groups(self.dynamo_cfg):
            try:
                one = plan(
                    config,
                    names=PARALLEL_NAMES,
                    nodes=1,
                    backend="ray",
                    tensor_parallel_size=group["tp"],
                    pipeline_parallel_size=1,
                    data_parallel_size=1,
                    **common,
                )
            except (PlanError, TypeError) as exc:
                if self.ignore:
                    continue
                raise Stop(
                    "Stop with the planner's objection to a Dynamo worker group",
                    f"The planner refused the Dynamo {group['group']} workers ({group['var']}={group['tp']}, one "
                    f"worker on {group['tp']} GPUs of one node): {exc}. Fix: change {group['var']} in the inventory.",
                ) from None
            self.dynamo_plans.append({**group, "plan": one})
        unfit = [g for g in self.dynamo_plans if not g["plan"]["fits"]]
        if unfit and not self.ignore:
            gpus = to_int(common["gpus_per_node"])
            parts = [
                f"The Dynamo {g['group']} worker ({g['var']}={g['tp']}, one replica on {g['tp']} GPUs of one node): "
                f"the model {model} {g['plan']['reason']}"
                for g in unfit
            ]
            if any(to_int(g["tp"]) < gpus for g in unfit):
                fix = (
                    f"raise {_join([g['var'] for g in unfit])} (up to validate_gpus_per_node={gpus}), or lower "
                    "vllm_serve_max_model_len"
                )
            else:
                fix = (
                    "a worker already has every GPU of a node: serve a quantized checkpoint (FP8, as seed 004 does), "
                    "or GPUs with more memory, or the vllm stack (PP across the nodes)"
                )
            raise Stop(
                "Stop if a Dynamo worker does not fit its GPUs",
                f"{_join(parts, '; ')}. Fix: {fix}; or validate_ignore_plan=true to go on anyway.",
            )
        if self.dynamo_plans:
            self.report.append(
                "; ".join(
                    f"Dynamo {g['group']} worker: TP {g['tp']} on one node, weights "
                    f"{_gib(g['plan']['weight_bytes'] / g['tp'])} GiB per GPU, KV cache {g['plan']['kv_cache_tokens']} "
                    "tokens"
                    for g in self.dynamo_plans
                )
            )

    # --- the run ----------------------------------------------------------------------------------

    def unknown(self) -> None:
        i = self.i
        found = unknown_names({h: i.names.get(h, ()) for h in self.hosts}, i.specs, list(i.defaults), i.prefixes)
        if found:
            words = [f"{u['var']} (on {_join(u['hosts'])}{_did_you_mean(u['suggestion'])})" for u in found]
            self.report.append(
                f"WARNING: no role of multinode.vllm reads {_join(words)}: it changes nothing. Fix: correct the name "
                "(see README, Role variables), or remove it."
            )

    def run(self) -> None:
        if self.i.plan_only is not None:
            self.model()
            return
        self.unknown()
        if self.slurm:
            self.report.append(
                f"SLURM inventory: the variables of {_join(self.hosts)} (slurm_login) are checked here; the job's "
                "options, layout and memory plan are checked by the slurm phase on the login host, before sbatch."
            )
        else:
            self.inventory()
        self.variables()
        if not self.slurm:
            self.shape()
            self.model()


def _did_you_mean(suggestion: str) -> str:
    return f"; did you mean {suggestion}?" if suggestion else ""


def plan_line(p: Mapping[str, Any], nodes: int, gpus: int) -> str:
    """ "TP 8 x PP 2 on 2 nodes x 8 GPUs; weights 756.4 GiB (bfloat16), KV cache ... : <reason>"."""
    dp = f"DP {p['data_parallel_size']} x " if (p.get("data_parallel_size") or 1) > 1 else ""
    ep = (
        f" with expert parallel ({p['experts_per_gpu']} of {p['num_experts']} experts per GPU)"
        if p.get("enable_expert_parallel")
        else ""
    )
    notes = ("".join(f". Note: {n}" for n in p["notes"])) if p.get("notes") else ""
    return (
        f"{dp}TP {p['tensor_parallel_size']} x PP {p['pipeline_parallel_size']}{ep} on {nodes} nodes x {gpus} GPUs; "
        f"weights {_gib(p['weight_bytes'])} GiB ({p['dtype']}), KV cache {p['kv_cache_tokens']} tokens "
        f"({p['kv_bytes_per_token']} B/token), max_model_len {p['max_model_len']}: {p['reason']}{notes}"
    )


def validate(inputs: Inputs) -> dict[str, Any]:
    """Every check, in order; the first that fails stops (see the module's docstring for the result)."""
    run = _Run(inputs)
    try:
        run.run()
    except Stop as stop:
        return {"failed": True, "check": stop.check, "msg": stop.msg, "report": run.report}
    return {"failed": False, "report": run.report, "plan": run.plan, "dynamo_plans": run.dynamo_plans}
