# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of multinode.vllm.validate_cluster: every check of the validate phase in one task.

Runs on the controller only. It reads each host's variables once (Ansible's ``hostvars`` templates
a host's variables on every access: forty tasks read them forty times), hands them to the pure
checks of ``module_utils/_validate.py`` and returns their verdict: the first problem with the check
that found it, or the report lines and the plan.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import resolves, undefined_refs
from ansible_collections.multinode.vllm.plugins.module_utils._validate import ADDRESS_VARS, Inputs, validate
from jinja2 import Undefined

_ARGS = {
    "rules": dict(type="dict", required=True),
    "default_files": dict(type="list", elements="path", default=[]),
    "spec_files": dict(type="list", elements="path", default=[]),
    "prefixes": dict(type="list", elements="str", default=[]),
    "head_group": dict(type="str", default=""),
    "worker_group": dict(type="str", default=""),
    "gpus_per_node": dict(type="raw", default=8),
    "gpu_memory_gib": dict(type="raw", default=80),
    "model_config_path": dict(type="str", default=""),
    "model_config": dict(type="raw", default={}),
    "require_api_key": dict(type="bool", default=False),
    "ignore_plan": dict(type="bool", default=False),
    "dynamo_vars": dict(type="list", elements="str", default=[]),
    "plan_only": dict(type="dict"),
}


class _Missing(Undefined):
    """A variable whose template names something undefined (the read raised instead of returning one)."""


def _read_host(hostvars, host, wanted, prefix):
    """(values, names): the variables of ``wanted`` or with ``prefix`` that the host defines, templated once."""
    source = hostvars[host]
    names = [str(k) for k in source]
    values = {}
    for name in names:
        if name in wanted or name.startswith(prefix):
            try:
                values[name] = source[name]
            except AnsibleError as exc:
                missing = getattr(exc, "_undefined_name", None) or _undefined_name(str(exc))
                values[name] = _Missing(name=missing)
    return values, names


def _undefined_name(text):
    """The name in "'vault_api_key' is undefined" (Ansible's message), else "a variable"."""
    if "'" in text and " is undefined" in text:
        return text.split("'")[1]
    return "a variable"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self.validate_argument_spec(argument_spec=_ARGS)[1]

        defaults = {}
        for path in args["default_files"]:
            defaults.update(self._loader.load_from_file(path) or {})
        specs = [self._loader.load_from_file(path) or {} for path in args["spec_files"]]

        groups = {str(k): [str(h) for h in v] for k, v in (task_vars.get("groups") or {}).items()}
        head_group = args["head_group"] or defaults.get("multinode_head_group", "ray_head")
        worker_group = args["worker_group"] or defaults.get("multinode_worker_group", "ray_workers")
        rules = args["rules"]
        wanted = set(rules) | set(ADDRESS_VARS) | set(args["dynamo_vars"])
        wanted.update(
            (
                "multinode_ray_num_gpus",
                "multinode_model",
                "multinode_backend",
                "vllm_serve_dtype",
                "vllm_serve_max_model_len",
                "vllm_serve_gpu_memory_utilization",
                "vllm_serve_tensor_parallel_size",
                "vllm_serve_pipeline_parallel_size",
                "vllm_serve_data_parallel_size",
                "vllm_serve_enable_expert_parallel",
            )
        )
        hosts = []
        for name in ("vllm_cluster", head_group, worker_group, "slurm_login"):
            hosts.extend(h for h in groups.get(name, []) if h not in hosts)
        hostvars = task_vars.get("hostvars") or {}
        values, names = {}, {}
        if args["plan_only"] is None:
            for host in hosts:
                if host in hostvars:
                    values[host], names[host] = _read_host(hostvars, host, wanted, "cluster_firewall_")
        undefined = undefined_refs(values, list(values), list(rules), Undefined)
        defined = {h: {k: v for k, v in row.items() if not isinstance(v, Undefined)} for h, row in values.items()}

        verdict = validate(
            Inputs(
                groups=groups,
                hostvars=defined,
                names=names,
                undefined=undefined,
                rules=rules,
                defaults=defaults,
                specs=specs,
                prefixes=args["prefixes"],
                head_group=head_group,
                worker_group=worker_group,
                gpus_per_node=args["gpus_per_node"],
                gpu_memory_gib=args["gpu_memory_gib"],
                model_config_path=args["model_config_path"],
                model_config=args["model_config"],
                require_api_key=args["require_api_key"],
                ignore_plan=args["ignore_plan"],
                dynamo_vars=args["dynamo_vars"],
                resolves=resolves,
                plan_only=args["plan_only"],
            )
        )
        result.update(verdict)
        result["changed"] = False
        return result
