# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cluster firewall's inputs as Jinja2 filters: member addresses, CIDR lists, port sets."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: firewall_members
short_description: The cluster members' addresses for the cluster firewall
description:
  - Takes the C(multinode_fabric) facts of every cluster host (host name -> facts) and returns each
    node's control IP and the IPv4 addresses of its control and data (NCCL) interfaces, plus the
    extra members, split into C(ipv4) and C(ipv6) lists.
  - Fails naming the hosts without facts, or the bad entry of O(extra).
  - The same plugin file also provides C(firewall_addresses) (a list of IPs/CIDRs split into
    C(ipv4) and C(ipv6), failing with the variable's name on a bad entry), C(firewall_ports)
    (ports and C(A-B) ranges merged into nftables set elements) and C(firewall_dynamic_ports)
    (the content of C(/proc/sys/net/ipv4/ip_local_port_range) to the range C(LOW-65535)) and
    C(firewall_port_overlaps) (the named port sets that hold a port, so that the API port can be
    kept out of the cluster's internal ones).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: Host name -> that host's C(ansible_facts.multinode_fabric).
    type: dict
    required: true
  extra:
    description: More member IPs or CIDRs (C(cluster_firewall_extra_members)).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Show who may reach the Ray, NCCL and vLLM-internal ports
  ansible.builtin.debug:
    msg: "{{ _fabrics | multinode.vllm.firewall_members(['10.0.9.5']) }}"
  vars:
    _hosts: "{{ groups['vllm_cluster'] }}"
    _fabrics: "{{ dict(_hosts | zip(_hosts | map('extract', hostvars, ['ansible_facts', 'multinode_fabric']))) }}"

- name: Split the API client CIDRs
  ansible.builtin.debug:
    msg: "{{ ['0.0.0.0/0', '::/0'] | multinode.vllm.firewall_addresses('cluster_firewall_api_clients') }}"

- name: Merge port ranges for an nftables set
  ansible.builtin.debug:
    msg: "{{ [6379, '10002-19999', 10001] | multinode.vllm.firewall_ports('cluster_firewall_ray_ports') }}"
"""

RETURN = r"""
_value:
  description: C(ipv4) and C(ipv6) lists of addresses and CIDRs, normalised and sorted.
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._firewall import (
    FirewallError,
    dynamic_ports,
    member_addresses,
    port_overlaps,
    port_ranges,
    split_addresses,
)


def _wrap(func, *args):
    try:
        return func(*args)
    except FirewallError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def firewall_members(fabrics, extra=None):
    if not isinstance(fabrics, dict):
        raise AnsibleFilterError("firewall_members: give a dict of host name -> multinode_fabric facts")
    return _wrap(member_addresses, fabrics, extra or [])


def firewall_addresses(values, variable="addresses"):
    return _wrap(split_addresses, values, variable)


def firewall_ports(values, variable="ports"):
    return _wrap(port_ranges, values, variable)


def firewall_dynamic_ports(local_port_range):
    return _wrap(dynamic_ports, local_port_range)


def firewall_port_overlaps(port, named):
    if not isinstance(named, dict):
        raise AnsibleFilterError("firewall_port_overlaps: give a dict of variable name -> ports")
    return _wrap(port_overlaps, port, named)


class FilterModule:
    def filters(self):
        return {
            "firewall_port_overlaps": firewall_port_overlaps,
            "firewall_members": firewall_members,
            "firewall_addresses": firewall_addresses,
            "firewall_ports": firewall_ports,
            "firewall_dynamic_ports": firewall_dynamic_ports,
        }
