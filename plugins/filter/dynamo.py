# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Dynamo stack's rules as Jinja2 filters (plugins/module_utils/_dynamo.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# The filters are documented beside this file: dynamo_layout_problems.yml, dynamo_worker_groups.yml,
# dynamo_worker_plan.yml,
# dynamo_worker_argv.yml, dynamo_frontend_argv.yml, dynamo_runtime_env.yml, dynamo_etcd_range_body.yml,
# dynamo_registrations.yml, dynamo_stale_units.yml, dynamo_node_units.yml, dynamo_status_problems.yml.

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils import _dynamo


def _call(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except _dynamo.DynamoError as exc:
        raise AnsibleFilterError(str(exc)) from None


def dynamo_layout_problems(cfg, hosts, gpus_per_node=None):
    if not isinstance(cfg, dict):
        raise AnsibleFilterError("dynamo_layout_problems: give a dict of variable -> value")
    return _dynamo.layout_problems(cfg, list(hosts or []), gpus_per_node)


def dynamo_worker_groups(cfg):
    if not isinstance(cfg, dict):
        raise AnsibleFilterError("dynamo_worker_groups: give a dict of variable -> value")
    return _dynamo.worker_groups(cfg)


def dynamo_worker_plan(cfg, hosts):
    return _call(_dynamo.worker_plan, cfg, list(hosts or []))


def dynamo_worker_argv(worker, engine, python, model, served_model_name, extra_args=()):
    return _call(
        _dynamo.worker_argv,
        engine,
        worker["mode"],
        python,
        model,
        served_model_name,
        int(worker["tp"]),
        list(extra_args or []),
    )


def dynamo_frontend_argv(python, http_host, http_port, router_mode, extra_args=()):
    return _call(_dynamo.frontend_argv, python, http_host, int(http_port), router_mode, list(extra_args or []))


def dynamo_runtime_env(node_ip, head_ip, etcd_port, nats_port, namespace="dynamo"):
    return _call(_dynamo.runtime_env, node_ip, head_ip, int(etcd_port), int(nats_port), namespace)


def dynamo_etcd_range_body(prefix=_dynamo.INSTANCES_PREFIX):
    return _dynamo.etcd_range_body(prefix)


def dynamo_registrations(etcd_answer, plan, node_ips, namespace="dynamo"):
    kvs = _call(_dynamo.parse_etcd_range, etcd_answer)
    regs = _dynamo.registrations(kvs)
    return dict(_dynamo.registration_report(plan, node_ips, regs, namespace), registrations=regs)


def dynamo_node_units(workers, is_head=False):
    return _dynamo.node_units(workers or [], bool(is_head))


def dynamo_stale_units(present, wanted):
    return _dynamo.stale_units(present or [], wanted or [])


def dynamo_status_problems(status, hosts):
    if not isinstance(status, dict):
        raise AnsibleFilterError("dynamo_status_problems: give the status report (a dict)")
    return _dynamo.status_problems(status, list(hosts or []))


class FilterModule:
    def filters(self):
        return {
            "dynamo_layout_problems": dynamo_layout_problems,
            "dynamo_worker_groups": dynamo_worker_groups,
            "dynamo_worker_plan": dynamo_worker_plan,
            "dynamo_worker_argv": dynamo_worker_argv,
            "dynamo_frontend_argv": dynamo_frontend_argv,
            "dynamo_runtime_env": dynamo_runtime_env,
            "dynamo_etcd_range_body": dynamo_etcd_range_body,
            "dynamo_registrations": dynamo_registrations,
            "dynamo_stale_units": dynamo_stale_units,
            "dynamo_node_units": dynamo_node_units,
            "dynamo_status_problems": dynamo_status_problems,
        }
