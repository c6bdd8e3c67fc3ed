"""The bad-input suite: wrong inventories and variables, each of which must stop early.

One table (``CASES``) serves the fast tests (tests/unit/test_bad_input.py: generated inventories,
no node), the simulated-cluster test (tests/e2e/test_bad_input_testbed.py: the same mutations on
a test bed's inventory, with a fingerprint of every node before and after) and the document
(docs/bad-input.md, written by ``python tests/bad_inputs.py doc``).

A case changes a valid inventory (``mutate``) and names the phase and task that must stop the run,
the variable (or group) the message must name, and a fragment of the fix it must give. Each case
runs ``site.yml`` with the JSON callback; the failing task is the last task with a failed result.

    python tests/bad_inputs.py doc      # docs/bad-input.md from the table and the last reports
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
MODELS = ROOT / "tests" / "fixtures" / "models"
MODEL_405B = str(MODELS / "llama-3.1-405b")
TINY = str(MODELS / "tiny-llama")
OUTPUT = ROOT / "tests" / "output"
DOC = ROOT / "docs" / "bad-input.md"
FAST_REPORT = OUTPUT / "bad-input-fast.json"
E2E_REPORT = OUTPUT / "bad-input-e2e.json"

FAST = "fast"  # generated inventory, no node (validate) or the controller itself as the nodes (preflight)
TESTBED = "testbed"  # the simulated cluster


# --- inventories ------------------------------------------------------------------------------


@dataclass
class Inv:
    """A YAML inventory (all > vllm_cluster > ray_head / ray_workers) with edit helpers."""

    doc: dict[str, Any]
    kind: str = FAST
    testbed_name: str = ""

    @property
    def cluster(self) -> dict[str, Any]:
        return self.doc["all"]["children"]["vllm_cluster"]

    def hosts(self, group: str) -> dict[str, Any]:
        grp = self.cluster.setdefault("children", {}).setdefault(group, {})
        if grp.get("hosts") is None:
            grp["hosts"] = {}
        return grp["hosts"]

    def set(self, **values: Any) -> Inv:
        """Cluster-wide variables (vllm_cluster vars: above the inventory's group_vars/all)."""
        self.cluster.setdefault("vars", {}).update(values)
        return self

    def hostvars(self, name: str) -> dict[str, Any]:
        for group in ("ray_head", "ray_workers"):
            if name in self.hosts(group):
                return self.hosts(group)[name]
        raise KeyError(name)

    def host(self, name: str, **values: Any) -> Inv:
        for group in ("ray_head", "ray_workers"):
            if name in self.hosts(group):
                self.hosts(group)[name].update(values)
        return self

    def move(self, name: str, group: str) -> Inv:
        hv = self.hostvars(name)
        for g in ("ray_head", "ray_workers"):
            self.hosts(g).pop(name, None)
        self.hosts(group)[name] = hv
        return self

    def add(self, group: str, name: str, **values: Any) -> Inv:
        self.hosts(group)[name] = dict(values)
        return self

    def write(self, directory: Path, group_vars: Path | None = None) -> Path:
        """hosts.yml, and with ``group_vars`` (an inventory's group_vars dir) its ``all`` beside a
        group_vars/vllm_cluster.yml of the cluster variables: a group_vars/all file wins over the
        group variables of hosts.yml, while group_vars/vllm_cluster.yml wins over group_vars/all."""
        directory.mkdir(parents=True, exist_ok=True)
        doc = copy.deepcopy(self.doc)
        if group_vars is not None:
            gv = directory / "group_vars"
            gv.mkdir(exist_ok=True)
            if not (gv / "all").exists():
                (gv / "all").symlink_to(group_vars / "all")
            cluster_vars = doc["all"]["children"]["vllm_cluster"].pop("vars", {})
            (gv / "vllm_cluster.yml").write_text(yaml.safe_dump(cluster_vars, sort_keys=False))
        (directory / "hosts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return directory


def fast_inventory() -> Inv:
    """Two hosts on TEST-NET addresses, never dialled: valid for the validate phase (405B, 2 x 8 GPUs)."""
    return Inv(
        {
            "all": {
                "children": {
                    "vllm_cluster": {
                        "children": {
                            "ray_head": {"hosts": {"node1": {"ansible_host": "192.0.2.11"}}},
                            "ray_workers": {"hosts": {"node2": {"ansible_host": "192.0.2.12"}}},
                        },
                        "vars": {"ansible_user": "root", "validate_model_config_path": MODEL_405B},
                    }
                }
            }
        },
        kind=FAST,
    )


def local_inventory() -> Inv:
    """Two hosts that are both the controller (local connection): the node-level checks read this
    machine and change nothing. Both have the same address, so only checks that come before the
    address check can be tested on it (and the duplicate address itself). The pynvml settings are a
    safety net: were every check to pass, preflight would stop before installing anything here."""
    inv = fast_inventory()
    for name in ("node1", "node2"):
        inv.host(name, ansible_connection="local", ansible_python_interpreter=sys.executable)
        inv.hostvars(name).pop("ansible_host")
    inv.set(preflight_python="/nonexistent/bin/python3", preflight_install_pynvml=False)
    return inv


def plan405(**over: Any) -> dict[str, Any]:
    """Every input of the plan set explicitly (405B on 2 x 8 x 80 GiB), so a case means the same on any base."""
    values: dict[str, Any] = {
        "multinode_model": "meta-llama/Llama-3.1-405B-Instruct",
        "validate_model_config_path": MODEL_405B,
        "validate_gpus_per_node": 8,
        "multinode_ray_num_gpus": 8,
        "validate_gpu_memory_gib": 80,
        "vllm_serve_tensor_parallel_size": 8,
        "vllm_serve_pipeline_parallel_size": 2,
        "vllm_serve_dtype": "auto",
        "vllm_serve_max_model_len": 0,
        "vllm_serve_gpu_memory_utilization": 0.9,
    }
    values.update(over)
    return values


# A GQA model whose 48 heads allow TP 12 but whose 8 KV heads do not.
MODEL_48_HEADS = {
    "model_type": "llama",
    "torch_dtype": "bfloat16",
    "hidden_size": 6144,
    "intermediate_size": 16384,
    "num_hidden_layers": 32,
    "num_attention_heads": 48,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


# --- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    wrong: str  # what is wrong, for the document
    phase: str  # validate | preflight
    task: str  # a fragment of the name of the task that must stop the run
    var: str  # the variable (or group) the message must name
    fix: str  # a fragment of the fix the message must give
    mutate: Callable[[Inv], Any]
    where: frozenset[str] = field(default_factory=lambda: frozenset({FAST, TESTBED}))
    more: tuple[str, ...] = ()  # further fragments of the message
    absent: tuple[str, ...] = ()  # what the output must not show (secrets)


def _c(id: str, wrong: str, phase: str, task: str, var: str, fix: str, mutate: Callable[[Inv], Any], **kw: Any) -> Case:
    if "where" in kw:
        kw["where"] = frozenset(kw["where"])
    return Case(id, wrong, phase, task, var, fix, mutate, **kw)


def _same_machine(inv: Inv) -> None:
    """node2 is node1 under another name: the controller twice (fast), or node1's container (test bed)."""
    if inv.kind == TESTBED:
        hv = inv.hostvars("node2")
        for key in ("ansible_host", "ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_common_args"):
            hv.pop(key, None)
        hv.update(ansible_connection="containers.podman.podman", ansible_host=f"{inv.testbed_name}-node1")


V, N, P = "validate", "validate nodes", "preflight"
# The dynamo stack's own requirements (native units, an open frontend, no key): what is left wrong is the case's.
DYNAMO_OK = {
    "multinode_stack": "dynamo",
    "multinode_runtime": "native",
    "multinode_api_open": True,
    "multinode_api_key": "",
}
CASES: list[Case] = [
    # --- inventory shape ---
    _c(
        "empty-inventory",
        "no host at all in the cluster groups (wrong -i path or an empty hosts.yml)",
        V,
        "no cluster host",
        "vllm_cluster",
        "point -i at an inventory",
        lambda i: (i.hosts("ray_head").clear(), i.hosts("ray_workers").clear()),
    ),
    _c(
        "no-head",
        "the head group is empty (both hosts are workers)",
        V,
        "exactly one host",
        "multinode_head_group",
        "keep one host under ray_head",
        lambda i: i.move("node1", "ray_workers"),
        more=("holds 0 hosts",),
    ),
    _c(
        "two-heads",
        "two hosts in the head group",
        V,
        "exactly one host",
        "multinode_head_group",
        "keep one host under ray_head",
        lambda i: i.move("node2", "ray_head"),
        more=("holds 2 hosts (node1, node2)",),
    ),
    _c(
        "head-also-worker",
        "the head is listed among the workers too",
        V,
        "head is also a worker",
        "multinode_worker_group",
        "remove the head from ray_workers",
        lambda i: i.add("ray_workers", "node1", **i.hostvars("node1")),
    ),
    _c(
        "stray-cluster-host",
        "a host in vllm_cluster that is neither head nor worker",
        V,
        "groups differ",
        "vllm_cluster",
        "make ray_head and ray_workers the children of vllm_cluster",
        lambda i: i.cluster.setdefault("hosts", {}).update({"node3": {"ansible_host": "192.0.2.13"}}),
        more=("neither head nor worker: node3",),
    ),
    _c(
        "workers-outside-cluster",
        "ray_workers defined beside vllm_cluster instead of under it",
        V,
        "groups differ",
        "vllm_cluster",
        "make ray_head and ray_workers the children of vllm_cluster",
        lambda i: i.doc["all"]["children"].update({"ray_workers": i.cluster["children"].pop("ray_workers")}),
        more=("missing from vllm_cluster: node2",),
    ),
    _c(
        "head-group-typo",
        "multinode_head_group names a group the inventory does not have",
        V,
        "names no inventory group",
        "multinode_head_group",
        "set multinode_head_group and multinode_worker_group",
        lambda i: i.set(multinode_head_group="ray_heads"),
        more=("multinode_head_group=ray_heads is no group",),
    ),
    _c(
        "worker-group-typo",
        "multinode_worker_group names a group the inventory does not have",
        V,
        "names no inventory group",
        "multinode_worker_group",
        "set multinode_head_group and multinode_worker_group",
        lambda i: i.set(multinode_worker_group="ray_worker"),
        more=("multinode_worker_group=ray_worker is no group",),
    ),
    _c(
        "duplicate-ansible-host",
        "two hosts with the same ansible_host",
        V,
        "share an address",
        "ansible_host",
        "give every host its own ansible_host",
        lambda i: i.host("node2", ansible_host=i.hostvars("node1")["ansible_host"]),
    ),
    _c(
        "unresolvable-host",
        "a host without ansible_host whose name does not resolve",
        V,
        "resolves to nothing",
        "ansible_host",
        "set ansible_host for these hosts",
        lambda i: i.add("ray_workers", "node9.invalid"),
        more=("node9.invalid: no ansible_host",),
    ),
    # --- ports ---
    _c(
        "port-zero",
        "the API port is 0",
        V,
        "not in 1-65535",
        "multinode_vllm_port",
        "to an integer in 1-65535",
        lambda i: i.set(multinode_vllm_port=0),
        more=("multinode_vllm_port=0 on node1, node2",),
    ),
    _c(
        "port-too-large",
        "the Ray port is 70000",
        V,
        "not in 1-65535",
        "multinode_ray_port",
        "to an integer in 1-65535",
        lambda i: i.set(multinode_ray_port=70000),
        more=("multinode_ray_port=70000",),
    ),
    _c(
        "port-string",
        "the mp rendezvous port is a word",
        V,
        "not in 1-65535",
        "multinode_master_port",
        "to an integer in 1-65535",
        lambda i: i.set(multinode_master_port="http"),
        more=("multinode_master_port=http",),
    ),
    _c(
        "port-negative",
        "the Ray dashboard port is negative",
        V,
        "not in 1-65535",
        "ray_head_dashboard_port",
        "to an integer in 1-65535",
        lambda i: i.set(ray_head_dashboard_port=-1),
    ),
    _c(
        "ssh-port-zero",
        "one host's ansible_port is 0",
        V,
        "not in 1-65535",
        "ansible_port",
        "to an integer in 1-65535",
        lambda i: i.host("node2", ansible_port=0),
        more=("ansible_port=0 on node2",),
    ),
    _c(
        "ports-clash-vllm-ray",
        "the API port is the Ray GCS port",
        V,
        "share a port",
        "multinode_ray_port",
        "different values",
        lambda i: i.set(multinode_vllm_port=6379, multinode_ray_port=6379),
        more=("multinode_vllm_port=6379, multinode_ray_port=6379",),
    ),
    _c(
        "ports-clash-dashboard",
        "the Ray dashboard (enabled) on the API port",
        V,
        "share a port",
        "ray_head_dashboard_port",
        "different values",
        lambda i: i.set(
            multinode_vllm_port=8000,
            ray_head_dashboard_port=8000,
            ray_head_include_dashboard=True,
            multinode_backend="ray",
        ),
        more=("multinode_vllm_port=8000, ray_head_dashboard_port=8000",),
    ),
    _c(
        "ports-clash-master",
        "mp backend: the rendezvous port is the API port",
        V,
        "share a port",
        "multinode_master_port",
        "different values",
        lambda i: i.set(multinode_backend="mp", multinode_vllm_port=8000, multinode_master_port=8000),
        more=("multinode_vllm_port=8000, multinode_master_port=8000",),
    ),
    # --- choices ---
    _c(
        "unknown-runtime",
        "multinode_runtime is not docker or native",
        V,
        "unknown",
        "multinode_runtime",
        "one of the values listed",
        lambda i: i.set(multinode_runtime="podman"),
        more=("multinode_runtime=podman on node1, node2 (one of native, docker)",),
    ),
    _c(
        "unknown-backend",
        "multinode_backend is not ray or mp",
        V,
        "unknown",
        "multinode_backend",
        "one of the values listed",
        lambda i: i.set(multinode_backend="nccl"),
        more=("(one of ray, mp)",),
    ),
    _c(
        "unknown-stack",
        "multinode_stack is not vllm or dynamo",
        V,
        "unknown",
        "multinode_stack",
        "one of the values listed",
        lambda i: i.set(multinode_stack="triton"),
        more=("multinode_stack=triton on node1, node2 (one of vllm, dynamo)",),
    ),
    _c(
        "unknown-load-strategy",
        "a safetensors load strategy vLLM does not know",
        V,
        "unknown",
        "multinode_model_load_strategy",
        "one of the values listed",
        lambda i: i.set(multinode_model_load_strategy="mmap"),
        more=('(one of "" (empty), lazy, eager, prefetch, torchao)',),
    ),
    _c(
        "unknown-dtype",
        "a dtype vLLM does not take (bf16)",
        V,
        "unknown",
        "vllm_serve_dtype",
        "one of the values listed",
        lambda i: i.set(vllm_serve_dtype="bf16"),
        more=("bfloat16",),
    ),
    _c(
        "unknown-teardown-unit",
        "a teardown unit that does not exist",
        V,
        "unknown",
        "multinode_teardown_units",
        "one of the values listed",
        lambda i: i.set(multinode_teardown_units=["vllm", "ray"]),
        more=("a list of vllm, ray-worker, ray-head",),
    ),
    # --- integers ---
    _c(
        "tp-string",
        "tensor parallel size as a word",
        V,
        "not a valid integer",
        "vllm_serve_tensor_parallel_size",
        "a whole number",
        lambda i: i.set(vllm_serve_tensor_parallel_size="eight"),
    ),
    _c(
        "tp-negative",
        "a negative tensor parallel size",
        V,
        "not a valid integer",
        "vllm_serve_tensor_parallel_size",
        "a whole number",
        lambda i: i.set(vllm_serve_tensor_parallel_size=-8),
        more=(">= 1",),
    ),
    _c(
        "pp-zero",
        "pipeline parallel size 0",
        V,
        "not a valid integer",
        "vllm_serve_pipeline_parallel_size",
        "a whole number",
        lambda i: i.set(vllm_serve_pipeline_parallel_size=0),
    ),
    _c(
        "max-model-len-unit",
        "max_model_len with a unit (8k)",
        V,
        "not a valid integer",
        "vllm_serve_max_model_len",
        "a whole number",
        lambda i: i.set(vllm_serve_max_model_len="8k"),
        more=(">= 0",),
    ),
    _c(
        "max-num-seqs-negative",
        "a negative max_num_seqs",
        V,
        "not a valid integer",
        "vllm_serve_max_num_seqs",
        "a whole number",
        lambda i: i.set(vllm_serve_max_num_seqs=-1),
    ),
    _c(
        "object-store-with-unit",
        "the Ray object store size as 2GB",
        V,
        "not a valid integer",
        "multinode_ray_object_store_memory",
        "not 2GB",
        lambda i: i.set(multinode_ray_object_store_memory="2GB"),
    ),
    _c(
        "nofile-bool",
        "a boolean where a count belongs",
        V,
        "not a valid integer",
        "multinode_limit_nofile",
        "a whole number",
        lambda i: i.set(multinode_limit_nofile=True),
        more=("multinode_limit_nofile=True",),
    ),
    _c(
        "timeout-zero",
        "a zero health timeout",
        V,
        "not a valid integer",
        "vllm_serve_health_timeout",
        "a whole number",
        lambda i: i.set(vllm_serve_health_timeout=0),
    ),
    _c(
        "ray-gpus-word",
        "multinode_ray_num_gpus as a word",
        V,
        "not a valid integer",
        "multinode_ray_num_gpus",
        "a whole number",
        lambda i: i.set(multinode_ray_num_gpus="all"),
    ),
    # --- GPU memory utilisation ---
    _c(
        "utilization-above-1",
        "gpu_memory_utilization 1.5",
        V,
        "utilisation",
        "vllm_serve_gpu_memory_utilization",
        "at most 1",
        lambda i: i.set(vllm_serve_gpu_memory_utilization=1.5),
    ),
    _c(
        "utilization-zero",
        "gpu_memory_utilization 0",
        V,
        "utilisation",
        "vllm_serve_gpu_memory_utilization",
        "at most 1",
        lambda i: i.set(vllm_serve_gpu_memory_utilization=0),
    ),
    _c(
        "utilization-percent",
        "gpu_memory_utilization as 90%",
        V,
        "utilisation",
        "vllm_serve_gpu_memory_utilization",
        "at most 1",
        lambda i: i.set(vllm_serve_gpu_memory_utilization="90%"),
    ),
    # --- booleans ---
    _c(
        "bool-word",
        "a switch set to a word",
        V,
        "not true or false",
        "vllm_serve_enforce_eager",
        "to true or false",
        lambda i: i.set(vllm_serve_enforce_eager="maybe"),
    ),
    _c(
        "bool-number",
        "a switch set to 2",
        V,
        "not true or false",
        "ray_head_include_dashboard",
        "to true or false",
        lambda i: i.set(ray_head_include_dashboard=2),
    ),
    # --- lists and mappings ---
    _c(
        "extra-args-string",
        "vLLM extra arguments as one string",
        V,
        "wrong shape",
        "vllm_serve_extra_args",
        "one item per argument",
        lambda i: i.set(vllm_serve_extra_args="--enable-chunked-prefill --max-num-seqs 64"),
    ),
    _c(
        "extra-args-mapping",
        "Ray extra arguments as a mapping",
        V,
        "wrong shape",
        "ray_head_extra_args",
        "a YAML list",
        lambda i: i.set(ray_head_extra_args={"num-cpus": 64}),
    ),
    _c(
        "node-env-list",
        "the node environment as a list of NAME=VALUE",
        V,
        "wrong shape",
        "multinode_node_env",
        "a mapping of environment variable names",
        lambda i: i.set(multinode_node_env=["NCCL_DEBUG=INFO"]),
    ),
    _c(
        "env-bad-name",
        "an environment variable name with a dash",
        V,
        "wrong shape",
        "vllm_serve_extra_env",
        "a mapping of environment variable names",
        lambda i: i.set(vllm_serve_extra_env={"NCCL-DEBUG": "INFO"}),
    ),
    _c(
        "packages-string",
        "the node packages as one string",
        V,
        "wrong shape",
        "multinode_node_packages",
        "a YAML list of non-empty strings",
        lambda i: i.set(multinode_node_packages="vllm ray"),
    ),
    # --- paths ---
    _c(
        "relative-hf-home",
        "a relative Hugging Face cache path",
        V,
        "not absolute",
        "multinode_hf_home",
        "to an absolute path",
        lambda i: i.set(multinode_hf_home="hf-cache"),
    ),
    _c(
        "relative-venv",
        "a relative venv path",
        V,
        "not absolute",
        "multinode_venv",
        "to an absolute path",
        lambda i: i.set(multinode_venv="venv"),
    ),
    # --- names ---
    _c(
        "empty-model",
        "no model",
        V,
        "empty or malformed",
        "multinode_model",
        "a Hugging Face id",
        lambda i: i.set(multinode_model=""),
    ),
    _c(
        "model-as-url",
        "the model given as its hub URL",
        V,
        "empty or malformed",
        "multinode_model",
        "a Hugging Face id (org/name, no URL)",
        lambda i: i.set(multinode_model="https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct"),
    ),
    _c(
        "model-home-path",
        "the model as a ~ path (the nodes' home is not the controller's)",
        V,
        "empty or malformed",
        "multinode_model",
        "an absolute path on the nodes (no ~, no ..)",
        lambda i: i.set(multinode_model="~/models/llama"),
    ),
    _c(
        "model-dotdot-path",
        "a model path that climbs with ..",
        V,
        "empty or malformed",
        "multinode_model",
        "no ..",
        lambda i: i.set(multinode_model="/srv/models/../../etc"),
    ),
    _c(
        "served-name-spaces",
        "a served model name with spaces",
        V,
        "empty or malformed",
        "multinode_served_model_name",
        "one name without spaces",
        lambda i: i.set(multinode_served_model_name="llama 405b"),
    ),
    _c(
        "api-key-env-dash",
        "the API key variable name with dashes",
        V,
        "empty or malformed",
        "multinode_api_key_env",
        "an environment variable name",
        lambda i: i.set(multinode_api_key_env="VLLM-API-KEY"),
    ),
    # --- secrets ---
    _c(
        "api-key-number",
        "an API key written as a YAML number",
        V,
        "secret is not a string",
        "multinode_api_key",
        "quote multinode_api_key",
        lambda i: i.set(multinode_api_key=314159265358),
        more=("multinode_api_key is a number",),
        absent=("314159265358",),
    ),
    _c(
        "api-open-where-key-required",
        "an open API (multinode_api_open) where validate_require_api_key is true",
        V,
        "API is open while a key is required, or open and given a key",
        "multinode_api_open",
        "remove multinode_api_open",
        lambda i: i.set(validate_require_api_key=True, multinode_api_open=True, multinode_api_key=""),
        more=("validate_require_api_key is true",),
    ),
    _c(
        "api-open-with-key",
        "an open API and an API key at once",
        V,
        "API is open while a key is required, or open and given a key",
        "multinode_api_open",
        "remove multinode_api_open (the key is used) or multinode_api_key",
        lambda i: i.set(multinode_api_open=True, multinode_api_key="s3cr3t-key-value"),
        absent=("s3cr3t-key-value",),
    ),
    _c(
        "api-open-not-bool",
        "multinode_api_open given as a word",
        V,
        "switch is not true or false",
        "multinode_api_open",
        "to true or false",
        lambda i: i.set(multinode_api_open="sometimes"),
    ),
    # --- extra args: one item per flag, none the collection sets, secrets never shown ---
    _c(
        "extra-args-flag-and-value-glued",
        "a flag and its value in one item of vllm_serve_extra_args",
        V,
        "wrong shape",
        "vllm_serve_extra_args",
        'write "--max-num-batched-tokens", "8192" as two items',
        lambda i: i.set(vllm_serve_extra_args=["--max-num-batched-tokens 8192"]),
    ),
    _c(
        "extra-args-managed-tp",
        "--tensor-parallel-size in vllm_serve_extra_args (the plan sets it)",
        V,
        "wrong shape",
        "vllm_serve_extra_args",
        "set vllm_serve_tensor_parallel_size instead",
        lambda i: i.set(vllm_serve_extra_args=["--tensor-parallel-size", "4"]),
    ),
    _c(
        "extra-args-api-key-on-argv",
        "the API key as --api-key in vllm_serve_extra_args (visible in ps)",
        V,
        "wrong shape",
        "vllm_serve_extra_args",
        "set multinode_api_key instead",
        lambda i: i.set(vllm_serve_extra_args=["--api-key", "sk-live-0123456789"]),
        absent=("sk-live-0123456789",),
    ),
    _c(
        "ray-head-args-port",
        "--port in ray_head_extra_args",
        V,
        "wrong shape",
        "ray_head_extra_args",
        "set multinode_ray_port instead",
        lambda i: i.set(ray_head_extra_args=["--port=6380"]),
    ),
    _c(
        "ray-worker-args-address",
        "--address in ray_worker_extra_args",
        V,
        "wrong shape",
        "ray_worker_extra_args",
        "drop --address from the list",
        lambda i: i.set(ray_worker_extra_args=["--address", "10.0.0.1:6379"]),
    ),
    _c(
        "env-bad-name-secret-not-shown",
        "a bad name in vllm_serve_extra_env beside a token",
        V,
        "wrong shape",
        "vllm_serve_extra_env",
        "write vllm_serve_extra_env as shown",
        lambda i: i.set(vllm_serve_extra_env={"HF-TOKEN": "hf_abcdefsecret", "WANDB_API_KEY": "wandb-secret-42"}),
        more=("HF-TOKEN",),
        absent=("hf_abcdefsecret", "wandb-secret-42"),
    ),
    # --- more values checked before anything changes ---
    _c(
        "model-cache-storage-nfs",
        "model_cache_storage nfs (not a choice)",
        V,
        "is unknown",
        "model_cache_storage",
        "one of the values listed",
        lambda i: i.set(model_cache_storage="nfs"),
    ),
    _c(
        "model-cache-source-ftp",
        "model_cache_source ftp",
        V,
        "is unknown",
        "model_cache_source",
        "one of the values listed",
        lambda i: i.set(model_cache_source="ftp"),
    ),
    _c(
        "firewall-action-block",
        "cluster_firewall_action block",
        V,
        "is unknown",
        "cluster_firewall_action",
        "one of the values listed",
        lambda i: i.set(cluster_firewall_action="block"),
    ),
    _c(
        "revision-with-space",
        "a model revision with a space",
        V,
        "empty or malformed",
        "multinode_model_revision",
        "without spaces",
        lambda i: i.set(multinode_model_revision="main branch"),
    ),
    _c(
        "api-clients-bad-cidr",
        "an API client CIDR with a /33",
        V,
        "wrong shape",
        "cluster_firewall_api_clients",
        "write cluster_firewall_api_clients as shown",
        lambda i: i.set(cluster_firewall_api_clients=["10.0.0.0/33"]),
    ),
    _c(
        "extra-members-not-an-ip",
        "a firewall member that is no address",
        V,
        "wrong shape",
        "cluster_firewall_extra_members",
        "is not an IP or a CIDR",
        lambda i: i.set(cluster_firewall_extra_members=["not-an-ip"]),
    ),
    _c(
        "ray-ports-high-to-low",
        "a Ray port range written high to low",
        V,
        "wrong shape",
        "cluster_firewall_ray_ports",
        "runs from high to low",
        lambda i: i.set(cluster_firewall_ray_ports=["10001-9"]),
    ),
    _c(
        "dynamic-ports-word",
        "cluster_firewall_dynamic_ports as a word",
        V,
        "wrong shape",
        "cluster_firewall_dynamic_ports",
        '"auto" or "32768-65535"',
        lambda i: i.set(cluster_firewall_dynamic_ports="lots"),
    ),
    _c(
        "open-ports-zero",
        "port 0 among the open ports",
        V,
        "wrong shape",
        "cluster_firewall_open_ports",
        "is not a port",
        lambda i: i.set(cluster_firewall_open_ports=[0]),
    ),
    _c(
        "object-store-as-float",
        "the Ray object store size as 2e9 (a float)",
        V,
        "not a valid integer",
        "multinode_ray_object_store_memory",
        "a whole number",
        lambda i: i.set(multinode_ray_object_store_memory=2e9),
    ),
    _c(
        "max-model-len-8k",
        "max_model_len written 8k",
        V,
        "not a valid integer",
        "vllm_serve_max_model_len",
        "a whole number",
        lambda i: i.set(vllm_serve_max_model_len="8k"),
    ),
    _c(
        "port-as-float",
        "the API port written 8000.0",
        V,
        "not in 1-65535",
        "multinode_vllm_port",
        "an integer in 1-65535",
        lambda i: i.set(multinode_vllm_port=8000.0),
    ),
    _c(
        "gpu-util-nan",
        "gpu_memory_utilization nan",
        V,
        "GPU memory utilisation",
        "vllm_serve_gpu_memory_utilization",
        "at most 1",
        lambda i: i.set(vllm_serve_gpu_memory_utilization="nan"),
    ),
    _c(
        "fractional-gpus",
        "half a GPU per Ray node",
        V,
        "not a valid integer",
        "multinode_ray_num_gpus",
        "a whole number",
        lambda i: i.set(multinode_ray_num_gpus=0.5),
    ),
    _c(
        "backend-capitalised",
        "multinode_backend Ray (capital R)",
        V,
        "is unknown",
        "multinode_backend",
        "one of the values listed",
        lambda i: i.set(multinode_backend="Ray"),
    ),
    _c(
        "gpu-memory-gib-nan",
        "the GPU memory as nan",
        V,
        "GPUs per node or their memory are not positive",
        "validate_gpu_memory_gib",
        "set them to the GPUs of one node",
        lambda i: i.set(validate_gpu_memory_gib="nan"),
    ),
    _c(
        "gpu-memory-gib-inf",
        "the GPU memory as inf",
        V,
        "GPUs per node or their memory are not positive",
        "validate_gpu_memory_gib",
        "set them to the GPUs of one node",
        lambda i: i.set(validate_gpu_memory_gib="inf"),
    ),
    _c(
        "hf-home-tilde",
        "the Hugging Face cache as a ~ path",
        V,
        "path is not absolute",
        "multinode_hf_home",
        "an absolute path",
        lambda i: i.set(multinode_hf_home="~/hf"),
    ),
    _c(
        "ray-auth-mode-capitalised",
        "multinode_ray_auth_mode Token (capital T)",
        V,
        "is unknown",
        "multinode_ray_auth_mode",
        "one of the values listed",
        lambda i: i.set(multinode_ray_auth_mode="Token"),
    ),
    _c(
        "master-port-zero",
        "the mp rendezvous port 0",
        V,
        "not in 1-65535",
        "multinode_master_port",
        "an integer in 1-65535",
        lambda i: i.set(multinode_master_port=0),
    ),
    # --- templates naming what is not there ---
    _c(
        "api-key-vault-var-missing",
        "the API key taken from a vault variable that is not loaded",
        V,
        "names an undefined variable",
        "multinode_api_key",
        "define vault_multinode_api_key",
        lambda i: i.set(multinode_api_key="{{ vault_multinode_api_key }}"),
        more=("--ask-vault-pass",),
    ),
    _c(
        "port-from-undefined-var",
        "the API port taken from a variable nobody defines",
        V,
        "names an undefined variable",
        "multinode_vllm_port",
        "define api_port_from_elsewhere",
        lambda i: i.set(multinode_vllm_port="{{ api_port_from_elsewhere }}"),
    ),
    # --- the API port among the cluster's internal ports ---
    _c(
        "api-port-in-ray-worker-range",
        "the API port inside Ray's worker port range",
        V,
        "API port is one the cluster uses internally",
        "multinode_vllm_port",
        "outside those, e.g. 8000",
        lambda i: i.set(multinode_vllm_port=10005),
        more=("cluster_firewall_ray_ports (10001-19999)",),
    ),
    _c(
        "api-port-is-ray-client",
        "the API port on Ray's client server port",
        V,
        "API port is one the cluster uses internally",
        "multinode_vllm_port",
        "outside those",
        lambda i: i.set(multinode_vllm_port=10001),
    ),
    _c(
        "api-port-in-dynamic-range",
        "the API port in the ephemeral range NCCL and Ray draw from",
        V,
        "API port is one the cluster uses internally",
        "multinode_vllm_port",
        "outside those",
        lambda i: i.set(multinode_vllm_port=40000),
        more=("cluster_firewall_dynamic_ports (32768-65535)",),
    ),
    _c(
        "api-port-is-dashboard-agent",
        "the API port on Ray's dashboard agent port",
        V,
        "API port is one the cluster uses internally",
        "multinode_vllm_port",
        "outside those",
        lambda i: i.set(multinode_vllm_port=52365),
        more=("cluster_firewall_ray_ports (52365)",),
    ),
    # --- one value for the whole cluster ---
    _c(
        "port-differs-per-host",
        "the API port set to another value in one host's vars",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_vllm_port",
        "set multinode_vllm_port once for the whole cluster",
        lambda i: i.host("node2", multinode_vllm_port=8001),
        more=("8000 on node1", "8001 on node2"),
    ),
    _c(
        "backend-differs-per-host",
        "the backend differs between the head and a worker",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_backend",
        "the nodes of one cluster must agree",
        lambda i: i.host("node2", multinode_backend="mp"),
        more=("mp on node2",),
    ),
    _c(
        "model-differs-per-host",
        "another model on one host",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_model",
        "set multinode_model once",
        lambda i: i.host("node2", multinode_model="/srv/models/other"),
        more=("/srv/models/other on node2",),
    ),
    _c(
        "dtype-differs-per-host",
        "another dtype on one host",
        V,
        "cluster-wide setting differs between hosts",
        "vllm_serve_dtype",
        "set vllm_serve_dtype once",
        lambda i: i.host("node2", vllm_serve_dtype="float32"),
    ),
    _c(
        "stack-differs-per-host",
        "the dynamo stack on one host, the vllm stack on the others",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_stack",
        "set multinode_stack once",
        lambda i: i.host("node2", multinode_stack="dynamo"),
        more=("dynamo on node2",),
    ),
    _c(
        "ray-token-differs-per-host",
        "another Ray token on one host (the workers could not join the head)",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_ray_auth_token",
        "set multinode_ray_auth_token once",
        lambda i: (
            i.set(multinode_ray_auth_token="tok-cluster-0123456789abcdef"),
            i.host("node2", multinode_ray_auth_token="tok-other-fedcba9876543210"),
        ),
        more=("one value on node1; another on node2 (a secret: the values are not shown)",),
        absent=("tok-cluster-0123456789abcdef", "tok-other-fedcba9876543210"),
    ),
    _c(
        "docker-image-differs-per-host",
        "another vLLM image on one host",
        V,
        "cluster-wide setting differs between hosts",
        "multinode_docker_image",
        "set multinode_docker_image once",
        lambda i: i.host("node2", multinode_docker_image="vllm/vllm-openai:v0.16.0"),
        more=("vllm/vllm-openai:v0.16.0 on node2",),
    ),
    _c(
        "dynamo-worker-does-not-fit",
        "the dynamo stack with one worker per node of TP 8: 405B in bf16 does not fit 8 GPUs of one node",
        V,
        "Dynamo worker does not fit",
        "dynamo_serve_tensor_parallel_size",
        "a quantized checkpoint",
        lambda i: i.set(**DYNAMO_OK, dynamo_serve_tensor_parallel_size=8),
        more=("one replica on 8 GPUs of one node", "does not fit"),
    ),
    _c(
        "dynamo-decode-tp-splits-no-heads",
        "a disaggregated decode group whose TP does not divide the attention heads",
        V,
        "planner's objection to a Dynamo",
        "dynamo_serve_decode_tensor_parallel_size",
        "change dynamo_serve_decode_tensor_parallel_size",
        lambda i: i.set(
            **DYNAMO_OK,
            dynamo_serve_layout="disaggregated",
            dynamo_serve_prefill_hosts=["node2"],
            dynamo_serve_decode_hosts=["node1"],
            dynamo_serve_decode_tensor_parallel_size=3,
            dynamo_serve_prefill_tensor_parallel_size=8,
        ),
        more=("does not divide num_attention_heads=128",),
    ),
    # --- GPUs and the plan ---
    _c(
        "gpus-per-node-zero",
        "validate_gpus_per_node 0",
        V,
        "GPUs per node or their memory",
        "validate_gpus_per_node",
        "set them to the GPUs of one node",
        lambda i: i.set(validate_gpus_per_node=0),
    ),
    _c(
        "tp-x-pp-mismatch",
        "TP x PP is not the number of GPUs",
        V,
        "does not fit the GPUs",
        "vllm_serve_tensor_parallel_size",
        "make the product 16",
        lambda i: i.set(**plan405(vllm_serve_pipeline_parallel_size=3)),
        more=("= 24 GPUs", "2 nodes x 8 GPUs = 16"),
    ),
    _c(
        "tp-x-pp-vs-ray-gpus",
        "TP x PP above the GPUs the nodes give Ray",
        V,
        "does not fit the GPUs",
        "multinode_ray_num_gpus",
        "make the product 2",
        lambda i: i.set(**plan405(multinode_ray_num_gpus=1)),
        more=("= 16 GPUs", "2 nodes x 1 GPUs = 2"),
    ),
    _c(
        "tp-x-pp-mp-spare-gpus",
        "TP x PP below the GPUs with the mp backend (vLLM runs on every node and must use every GPU)",
        V,
        "does not fit the GPUs",
        "multinode_backend",
        "make the product 16",
        lambda i: i.set(**plan405(multinode_backend="mp", vllm_serve_pipeline_parallel_size=1)),
        where={FAST},
        more=("= 8 GPUs", "2 nodes x 8 GPUs = 16", "--nnodes 2", "multinode_backend=ray"),
    ),
    _c(
        "dp-more-replicas-than-gpus",
        "3 data-parallel replicas of TP 8 on 2 x 8 GPUs (24 GPUs wanted)",
        V,
        "does not fit the GPUs",
        "vllm_serve_data_parallel_size",
        "set vllm_serve_data_parallel_size to at most 2",
        lambda i: i.set(**plan405(vllm_serve_data_parallel_size=3, vllm_serve_pipeline_parallel_size=1)),
        more=("3 replicas of 8 GPUs need 24",),
    ),
    _c(
        "dp-replica-wider-than-a-node",
        "data parallel with a replica (TP 8 x PP 2) wider than a node: each replica runs on one node",
        V,
        "does not fit the GPUs",
        "vllm_serve_data_parallel_size",
        "set vllm_serve_data_parallel_size=1",
        lambda i: i.set(**plan405(vllm_serve_data_parallel_size=2)),
        more=("wider than a node (8 GPUs)",),
    ),
    _c(
        "ep-on-a-dense-model",
        "expert parallel on a dense model (Llama 405B has no experts)",
        V,
        "planner's objection",
        "vllm_serve_enable_expert_parallel",
        "set vllm_serve_enable_expert_parallel=false",
        lambda i: i.set(**plan405(vllm_serve_enable_expert_parallel=True)),
        more=("the model is dense",),
    ),
    _c(
        "tp-not-dividing-heads",
        "TP 6 does not divide the model's 128 attention heads",
        V,
        "planner's objection",
        "vllm_serve_tensor_parallel_size",
        "change vllm_serve_tensor_parallel_size",
        lambda i: i.set(
            **plan405(validate_gpus_per_node=6, multinode_ray_num_gpus=6, vllm_serve_tensor_parallel_size=6)
        ),
        more=("6 does not divide num_attention_heads=128",),
    ),
    _c(
        "tp-vs-kv-heads",
        "TP 12 neither divides nor is a multiple of 8 KV heads",
        V,
        "planner's objection",
        "vllm_serve_tensor_parallel_size",
        "change vllm_serve_tensor_parallel_size",
        lambda i: i.set(
            **plan405(
                multinode_model="example/gqa-48-heads",
                validate_model_config_path="",
                validate_model_config=MODEL_48_HEADS,
                validate_gpus_per_node=12,
                multinode_ray_num_gpus=12,
                vllm_serve_tensor_parallel_size=12,
            )
        ),
        more=("num_key_value_heads=8",),
    ),
    _c(
        "pp-above-layers",
        "more pipeline stages than the model has layers",
        V,
        "planner's objection",
        "vllm_serve_pipeline_parallel_size",
        "change vllm_serve_pipeline_parallel_size",
        lambda i: i.set(
            **plan405(
                multinode_model="example/tiny",
                validate_model_config_path=TINY,
                validate_gpus_per_node=2,
                multinode_ray_num_gpus=2,
                validate_gpu_memory_gib=8,
                vllm_serve_tensor_parallel_size=1,
                vllm_serve_pipeline_parallel_size=4,
            )
        ),
        more=("4 stages for 2 layers",),
    ),
    _c(
        "model-larger-than-memory",
        "405B on 2 x 8 GPUs of 24 GiB",
        V,
        "model does not fit",
        "validate_gpu_memory_gib",
        "the weights alone need at least",
        lambda i: i.set(**plan405(validate_gpu_memory_gib=24)),
        more=("does not fit", "validate_ignore_plan=true"),
    ),
    _c(
        "kv-cache-too-small",
        "room for weights but not for one sequence of max_model_len",
        V,
        "model does not fit",
        "vllm_serve_max_model_len",
        "lower max_model_len to",
        lambda i: i.set(**plan405(validate_gpu_memory_gib=56, vllm_serve_max_model_len=131072)),
    ),
    _c(
        "utilization-too-low",
        "gpu_memory_utilization 0.3 leaves no room",
        V,
        "model does not fit",
        "vllm_serve_gpu_memory_utilization",
        "raise gpu_memory_utilization",
        lambda i: i.set(**plan405(vllm_serve_gpu_memory_utilization=0.3)),
    ),
    _c(
        "max-model-len-above-model",
        "max_model_len above the model's own",
        V,
        "planner's objection",
        "vllm_serve_max_model_len",
        "change vllm_serve_max_model_len",
        lambda i: i.set(**plan405(vllm_serve_max_model_len=200000)),
        more=("200000 is above the model's maximum 131072",),
    ),
    _c(
        "no-model-config",
        "a hub model and no config.json for the planner",
        V,
        "no model configuration",
        "validate_model_config_path",
        "set validate_model_config_path to its config.json",
        lambda i: i.set(
            multinode_model="meta-llama/Llama-3.1-8B-Instruct", validate_model_config_path="", validate_model_config={}
        ),
    ),
    _c(
        "model-config-path-missing",
        "validate_model_config_path names nothing",
        V,
        "names nothing",
        "validate_model_config_path",
        "point it at the model's config.json",
        lambda i: i.set(validate_model_config_path="/nonexistent/config.json"),
    ),
    _c(
        "model-config-not-json",
        "validate_model_config_path is not JSON",
        V,
        "not JSON",
        "validate_model_config_path",
        "point validate_model_config_path at the model's config.json",
        lambda i: i.set(validate_model_config_path=str(ROOT / "galaxy.yml")),
    ),
    _c(
        "model-config-incomplete",
        "a model configuration without its layer count",
        V,
        "planner's objection",
        "validate_model_config",
        "change validate_model_config_path / validate_model_config",
        lambda i: i.set(
            **plan405(
                multinode_model="example/partial",
                validate_model_config_path="",
                validate_model_config={"model_type": "llama", "hidden_size": 4096},
            )
        ),
    ),
    # --- on the nodes (preflight), before anything is installed or started ---
    _c(
        "unreachable-node",
        "a node whose SSH port does not answer",
        N,
        "cannot be reached",
        "ansible_port",
        "correct ansible_host / ansible_port / ansible_user",
        lambda i: i.host("node2", ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1),
        more=("node2 cannot be reached",),
    ),
    _c(
        "wrong-ssh-user",
        "a node reached with a user that may not log in",
        N,
        "cannot be reached",
        "ansible_user",
        "correct ansible_host / ansible_port / ansible_user",
        lambda i: i.host("node2", ansible_user="nobody-here"),
        where={TESTBED},
        more=("as nobody-here@",),
    ),
    _c(
        "python-missing",
        "ansible_python_interpreter points at no Python",
        N,
        "cannot run modules",
        "ansible_python_interpreter",
        "set ansible_python_interpreter to the node's Python 3",
        lambda i: i.host("node2", ansible_python_interpreter="/nonexistent/bin/python3"),
    ),
    _c(
        "control-interface-missing",
        "the fabric interface does not exist on the node",
        N,
        "fabric interface",
        "preflight_control_interface",
        "name interfaces that",
        lambda i: i.set(preflight_control_interface="bond7"),
        more=("interface bond7 does not exist",),
    ),
    _c(
        "data-interface-typo",
        "a misspelled NCCL interface",
        N,
        "fabric interface",
        "preflight_data_interfaces",
        "name interfaces that",
        lambda i: i.set(preflight_data_interfaces=["eht0"]),
        more=("interface eht0 does not exist",),
    ),
    _c(
        "control-ip-not-on-interface",
        "preflight_control_ip is not an address of the interface",
        N,
        "fabric interface",
        "preflight_control_ip",
        "must be an address of the control interface",
        lambda i: i.set(preflight_control_ip="10.9.9.9"),
        more=("preflight_control_ip 10.9.9.9 is not on",),
    ),
    _c(
        "loopback-control-interface",
        "the control interface is lo",
        N,
        "loopback",
        "preflight_control_interface",
        "to the fabric NIC",
        lambda i: i.set(preflight_control_interface="lo"),
        more=("127.0.0.1",),
    ),
    _c(
        "duplicate-node-ip",
        "two inventory hosts that are one machine (same fabric address)",
        N,
        "missing, shared or in different subnets",
        "preflight_control_interface",
        "remove the duplicate host",
        _same_machine,
        more=("shared: ",),
    ),
    _c(
        "different-subnets",
        "one node's control interface in another subnet",
        N,
        "missing, shared or in different subnets",
        "preflight_control_interface",
        "all in one subnet",
        lambda i: i.host("node2", preflight_control_interface="eth0"),
        where={TESTBED},
    ),
    _c(
        "preflight-python-missing",
        "preflight_python names no interpreter",
        P,
        "lacks pynvml",
        "preflight_python",
        "leave preflight_python empty",
        lambda i: i.set(preflight_python="/opt/no-such-venv/bin/python"),
        where={TESTBED},
    ),
    _c(
        "gpu-count-wrong",
        "preflight_gpus_per_node above what the nodes have",
        P,
        "different GPU counts",
        "preflight_gpus_per_node",
        "set preflight_gpus_per_node to what the nodes really have",
        lambda i: i.set(preflight_gpus_per_node=16),
        where={TESTBED},
    ),
    _c(
        "driver-pin-wrong",
        "preflight_driver_version pins a branch the nodes do not run",
        P,
        "different NVIDIA drivers",
        "preflight_driver_version",
        "or correct preflight_driver_version",
        lambda i: i.set(preflight_driver_version="535"),
        where={TESTBED},
    ),
    _c(
        "ib-ports-too-many",
        "more InfiniBand ports required than the nodes have",
        P,
        "InfiniBand ports",
        "preflight_ib_required_ports",
        "correct preflight_ib_required_ports",
        lambda i: i.set(preflight_ib_required_ports=16),
        where={TESTBED},
        more=("8 of 16 ports usable",),
    ),
    _c(
        "ib-rate-too-high",
        "a minimum InfiniBand rate above the ports' rate",
        P,
        "InfiniBand ports",
        "preflight_ib_min_rate_gbps",
        "preflight_ib_min_rate_gbps=800",
        lambda i: i.set(preflight_ib_min_rate_gbps=800),
        where={TESTBED},
    ),
    _c(
        "ib-prefix-typo",
        "an HCA prefix that matches no device",
        P,
        "InfiniBand ports",
        "preflight_ib_hca_prefix",
        "preflight_ib_hca_prefix=mlx4",
        lambda i: i.set(preflight_ib_hca_prefix="mlx4"),
        where={TESTBED},
    ),
    _c(
        "ib-sysfs-root-wrong",
        "an InfiniBand sysfs root that does not exist",
        P,
        "InfiniBand ports",
        "preflight_ib_sysfs_root",
        "preflight_ib_sysfs_root=/opt/no-such-sysfs",
        lambda i: i.set(preflight_ib_sysfs_root="/opt/no-such-sysfs"),
        where={TESTBED},
    ),
]


def cases(where: str) -> list[Case]:
    return [c for c in CASES if where in c.where]


def apply(case: Case, base: Inv) -> Inv:
    inv = Inv(copy.deepcopy(base.doc), kind=base.kind, testbed_name=base.testbed_name)
    case.mutate(inv)
    return inv


# --- running a case ---------------------------------------------------------------------------


@dataclass
class Outcome:
    rc: int
    seconds: float
    play: str  # the play of the failing task
    task: str  # the failing task
    host: str
    msg: str
    stdout: str
    stderr: str

    @property
    def phase(self) -> str:
        return self.play.split(" - ", 1)[0].strip().lower()

    def problems(self, case: Case) -> list[str]:
        """What is wrong with this outcome for ``case``; empty: the case passed."""
        found = []
        if self.rc == 0:
            found.append("the play did not fail")
        if self.phase != case.phase:
            found.append(f"stopped in phase {self.phase!r} (play {self.play!r}), expected {case.phase!r}")
        if case.task.lower() not in self.task.lower():
            found.append(f"failing task {self.task!r} does not contain {case.task!r}")
        flat = " ".join(self.msg.split())
        for text in (case.var, case.fix, *case.more):
            if text not in flat:
                found.append(f"{text!r} not in the message")
        everything = self.stdout + self.stderr
        for text in case.absent:
            if text in everything:
                found.append(f"{text!r} shown in the output")
        return found


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    return env


def parse_reports(stdout: str) -> dict[str, Any]:
    """The JSON callback prints one document per playbook: their plays, in order."""
    decoder = json.JSONDecoder()
    plays: list[Any] = []
    pos = stdout.find("{")
    while pos != -1:
        try:
            doc, end = decoder.raw_decode(stdout, pos)
        except ValueError:
            break
        plays += doc.get("plays", []) if isinstance(doc, dict) else []
        pos = stdout.find("{", end)
    return {"plays": plays}


def failing_task(report: dict[str, Any]) -> tuple[str, str, str, str]:
    """(play, task, host, msg) of the last failed result (a rescued failure is followed by its rescue's).

    A task that runs several checks (the validate phase's validate_cluster) names the one that
    stopped the run in its result's ``check``: the task is then "<task name>: <check>".
    """
    last = ("", "", "", "")
    unreachable = last
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in (task.get("hosts") or {}).items():
                if result.get("failed") and not result.get("ignore_errors"):
                    name = task["task"]["name"] + (f": {result['check']}" if result.get("check") else "")
                    last = (play["play"]["name"], name, host, str(result.get("msg", "")))
                elif result.get("unreachable") and not task["task"].get("ignore_unreachable"):
                    unreachable = (play["play"]["name"], task["task"]["name"], host, str(result.get("msg", "")))
    return last if last[1] else unreachable


def run_case(inventory: Path, playbook: str = "site.yml", *args: str, timeout: float = 300) -> Outcome:
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), playbook, *args],
        cwd=ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - start
    report = parse_reports(proc.stdout)
    play, task, host, msg = failing_task(report)
    return Outcome(proc.returncode, seconds, play, task, host, msg, proc.stdout, proc.stderr)


def record(path: Path, case: Case, outcome: Outcome, **extra: Any) -> None:
    """Add one case's outcome to a JSON report (the document is written from these)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[case.id] = {
        "rc": outcome.rc,
        "seconds": round(outcome.seconds, 2),
        "phase": outcome.phase,
        "task": outcome.task,
        "msg": " ".join(outcome.msg.split()),
        "problems": outcome.problems(case),
        **extra,
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


# --- the document -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def document() -> str:
    reports = {}
    for name, path in (("fast", FAST_REPORT), ("testbed", E2E_REPORT)):
        reports[name] = json.loads(path.read_text()) if path.exists() else {}
    lines = [
        "# Bad input: what stops a run, and where",
        "",
        "<!-- Written by `python tests/bad_inputs.py doc` from the case table in tests/bad_inputs.py and the",
        "     reports of the last runs of tests/unit/test_bad_input.py and tests/e2e/test_bad_input_testbed.py. -->",
        "",
        "Every wrong inventory or variable below stops `site.yml` early, with a message that names the",
        "variable (or group) to change and the fix:",
        "",
        "- **validate**: the controller play of `playbooks/validate.yml` (no node is contacted);",
        "- **validate nodes**: its second play, read-only on the nodes (`preflight` role, `tasks/nodes.yml`),",
        "  before the prepare phase installs anything: reach, Python, fabric interfaces, control addresses;",
        "- **preflight**: the GPU, driver and InfiniBand settings, which need the driver (NVML), before",
        "  anything is started.",
        "",
        "The fast tests (`tests/unit/test_bad_input.py`) run every case marked *fast* against a generated",
        "inventory (validate cases) or with the controller itself as both nodes (node cases). The test-bed",
        "test (`tests/e2e/test_bad_input_testbed.py`, test bed `mnv-bad`) runs every case through",
        "`site.yml` on the simulated cluster and checks that no node changed: the files under /etc, /opt,",
        "/srv, /usr, /var/tmp, /var/lib/dpkg and /root, the systemd units and unit files, Ray and vLLM",
        "processes, listening ports, nftables rules and containers, before and after each case, and the",
        "files of the shared directory.",
        "",
        f"{len(CASES)} cases: {len(cases(FAST))} fast, {len(cases(TESTBED))} on the test bed.",
        "",
        "| # | case | what is wrong | phase | stops at (task) | names | fix (fragment) | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, c in enumerate(CASES, 1):
        runs = ", ".join(w for w in ("fast", "test bed") if (FAST if w == "fast" else TESTBED) in c.where)
        cells = [str(n), f"`{c.id}`", _cell(c.wrong), c.phase, f"…{_cell(c.task)}…", f"`{c.var}`", _cell(c.fix), runs]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## The messages (from the last runs)", ""]
    for c in CASES:
        # node cases read as on real nodes (the controller has many interfaces); the others as generated
        order = ("testbed", "fast") if c.phase != V else ("fast", "testbed")
        got = reports[order[0]].get(c.id) or reports[order[1]].get(c.id)
        lines.append(f"**`{c.id}`** — {c.wrong}")
        lines.append("")
        if got:
            lines.append(f"> {got['phase']} · *{_cell(got['task'])}*  ")
            lines.append(f"> {_cell(got['msg'])}")
        else:
            lines.append("> (no run recorded yet)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["doc"]:
        sys.exit("usage: python tests/bad_inputs.py doc")
    DOC.write_text(document())
    print(f"wrote {DOC.relative_to(ROOT)}: {len(CASES)} cases")
