# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SLURM path's rules as Jinja2 filters (plugins/module_utils/_slurm.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# The filters are documented beside this file: slurm_parallel.yml, slurm_option_problems.yml,
# slurm_capacity.yml, slurm_decide.yml, slurm_node_conf.yml, slurm_job.yml.

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils import _slurm


def _int(value, name):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError("%s: not an integer: %r" % (name, value)) from None


def slurm_parallel(nodes, gpus_per_node, tensor_parallel_size="", pipeline_parallel_size="", data_parallel_size=""):
    return _slurm.parallel_layout(
        _int(nodes, "slurm_nodes"),
        _int(gpus_per_node, "slurm_gpus_per_node"),
        tensor_parallel_size,
        pipeline_parallel_size,
        data_parallel_size,
    )


def slurm_option_problems(options):
    if not isinstance(options, dict):
        raise AnsibleFilterError("slurm_option_problems: give a dict of slurm_* variable -> value")
    return _slurm.option_problems(options)


def slurm_capacity(sinfo, partition, partition_text, nodes, gpus_per_node):
    info = _slurm.parse_key_values(partition_text or "") if partition_text else {}
    return _slurm.capacity_problem(
        partition,
        info,
        _slurm.parse_sinfo_nodes(sinfo or ""),
        _int(nodes, "nodes"),
        _int(gpus_per_node, "gpus_per_node"),
    )


def slurm_decide(squeue, script, secrets_digest=""):
    comment = _slurm.job_identity(script, secrets_digest)
    jobs = _slurm.parse_squeue(squeue or "")
    return dict(_slurm.decide(jobs, comment), comment=comment, jobs=jobs)


def slurm_node_conf(slurmd_c, gpus, memory_fraction=1.0):
    try:
        return _slurm.node_conf(_slurm.parse_slurmd_c(slurmd_c or ""), _int(gpus, "gpus"), float(memory_fraction))
    except ValueError as exc:
        raise AnsibleFilterError("slurm_node_conf: %s" % exc) from None


def slurm_job(scontrol_text):
    if not (scontrol_text or "").strip():
        return {}
    return _slurm.job_status(_slurm.parse_key_values(scontrol_text))


class FilterModule:
    def filters(self):
        return {
            "slurm_parallel": slurm_parallel,
            "slurm_option_problems": slurm_option_problems,
            "slurm_capacity": slurm_capacity,
            "slurm_decide": slurm_decide,
            "slurm_node_conf": slurm_node_conf,
            "slurm_job": slurm_job,
        }
