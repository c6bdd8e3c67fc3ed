# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The serve phase's restart rule as a Jinja2 filter (plugins/module_utils/_units.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: stale_members
short_description: The members that started after vLLM on the head
description:
  - vLLM does not survive a lost member. When a Ray node (ray backend) or a headless vLLM (mp
    backend) started after the vLLM on the head, Ray looks whole and /health still answers 200,
    but the engine's workers are gone, and vLLM must restart.
  - Takes host -> {unit -> start time (seconds since the epoch, 0 when not running)}, as the
    C(started_at) of C(multinode.vllm.unit_state), and returns C("host unit") strings.
  - The same plugin file also provides status.yml's rules, C(shm_status) (C(df) output of
    /dev/shm against what Ray and vLLM need), C(node_status) (a node's processes and problems from
    its C(unit_state) result), C(cluster_status) (the group's status and its problems),
    C(cluster_gpus) (the GPUs the group announces to Ray, from every node's variables, unreachable
    ones too), C(unit_files) (the unit and environment files a unit reads at start, per runtime) and
    C(ray_auth_env) (Ray's token authentication in a process's environment, the mode and the token
    file's path but never the token, for the hosts path and the SLURM job alike).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: Host name -> unit name -> start time.
    type: dict
    required: true
  head:
    description: The host where O(unit) runs.
    type: str
    required: true
  unit:
    description: The unit the others must not have started after.
    type: str
    default: vllm
  restarts:
    description:
      - Host name -> unit name -> restarts by systemd or Docker on their own since the last start that
        was asked for (C(restarts) of C(multinode.vllm.unit_state); a manual start resets them).
    type: dict
  spread:
    description:
      - Seconds after the head's O(unit) within which O(unit) on another node counts as the same start
        (mp backend - one task starts, or restarts, the vLLM of every node; a slow stop delays a node's
        start), unless O(restarts) says it restarted on its own.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Show the members that restarted after vLLM
  ansible.builtin.debug:
    msg: "{{ {'n1': {'vllm': 100, 'ray-head': 50}, 'n2': {'ray-worker': 120}} | multinode.vllm.stale_members('n1') }}"
"""

RETURN = r"""
_value:
  description: C("host unit") for every unit that started after O(unit) on O(head); empty when it does not run.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._units import (
    cluster_gpus,
    cluster_status,
    node_status,
    parse_shm,
    ray_auth_env,
    unit_files,
)
from ansible_collections.multinode.vllm.plugins.module_utils._units import stale_members as _stale_members


def stale_members(started, head, unit="vllm", restarts=None, spread=0):
    if not isinstance(started, dict) or not isinstance(restarts, (dict, type(None))):
        raise AnsibleFilterError("stale_members: give dicts of host -> {unit: start time} (and {unit: restarts})")
    return _stale_members(dict(started), head, unit, None if restarts is None else dict(restarts), int(spread))


class FilterModule:
    def filters(self):
        return {
            "stale_members": stale_members,
            "shm_status": parse_shm,
            "node_status": node_status,
            "cluster_status": cluster_status,
            "unit_files": unit_files,
            "cluster_gpus": cluster_gpus,
            "ray_auth_env": ray_auth_env,
        }
