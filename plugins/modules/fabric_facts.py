#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: fabric_facts
short_description: Detect the control IP and the NCCL/Gloo interfaces of a GPU node
description:
  - Chooses the control interface and IP (VLLM_HOST_IP, the Ray node IP, GLOO_SOCKET_IFNAME) and the
    data interfaces (NCCL_SOCKET_IFNAME) from C(ip -j addr).
  - "Rules, in order: explicit options win; else C(bond0) (bare metal); else the droplet layout, where
    the fabric IP is that of C(eth2) and C(eth2..eth9) are the NCCL rails (the public C(eth0) is never
    chosen, the VPC C(eth1) only with O(prefer_vpc)); else the interface of the default route."
  - Fails when the chosen interface is missing, down, or has no IPv4 address.
author: multinode.vllm developers (@multinode)
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Changes nothing.
  facts:
    support: full
    description: Returns C(ansible_facts.multinode_fabric).
options:
  control_interface:
    description: Use this interface for control traffic instead of the detected one.
    type: str
  data_interfaces:
    description: Use these interfaces for NCCL instead of the detected ones.
    type: list
    elements: str
  control_ip:
    description: The address to use when the control interface has several.
    type: str
  prefer_vpc:
    description: On the droplet layout, put control traffic on the VPC interface C(eth1).
    type: bool
    default: false
  ip_binary:
    description: The C(ip) command to run.
    type: path
    default: ip
  sysfs_root:
    description: Root of sysfs, where link speeds are read.
    type: path
    default: /sys
  procfs_root:
    description: Root of procfs, where the ephemeral port range is read (the cluster firewall protects it).
    type: path
    default: /proc
  ib:
    description:
      - Also read the InfiniBand HCAs, as M(multinode.vllm.ib_facts) does, into
        C(ansible_facts.multinode_ib) (one round trip for both). When they cannot be summarized,
        C(multinode_ib) is left unset and C(ib_error) says why (ib_facts then reports it).
    type: bool
    default: false
  ib_sysfs_root:
    description: Root of sysfs where the HCAs are read (tests point it at a fixture tree).
    type: path
    default: /sys
  ib_hca_prefix:
    description: Only HCAs whose name starts with this count (C(mlx5)).
    type: str
    default: mlx5
  ib_min_rate_gbps:
    description: Active ports slower than this are not counted (0 counts every active port).
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Detect the fabric
  multinode.vllm.fabric_facts:

- name: Bare metal with an explicit fabric interface
  multinode.vllm.fabric_facts:
    control_interface: bond0

- name: Show the NCCL interfaces
  ansible.builtin.debug:
    msg: "{{ ansible_facts['multinode_fabric']['nccl_socket_ifname'] }}"
"""

RETURN = r"""
ansible_facts:
  description: The detected fabric.
  returned: always
  type: dict
  contains:
    multinode_fabric:
      description: >-
        control_interface, control_ip, control_prefix, control_subnet, data_interfaces,
        nccl_socket_ifname, gloo_socket_ifname, layout, source, interfaces, and
        ip_local_port_range (the text of net.ipv4.ip_local_port_range, empty when unreadable).
      type: dict
      returned: always
      sample:
        control_interface: bond0
        control_ip: 10.10.0.11
        control_subnet: 10.10.0.0/24
        nccl_socket_ifname: bond0
        layout: bond0
        ip_local_port_range: "32768\t60999"
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._fabric import (
    FabricError,
    default_route_interface,
    parse_ip_addr,
    select_fabric,
)
from ansible_collections.multinode.vllm.plugins.module_utils._ib import IbError, read_hcas, summarize


def _speeds(sysfs_root, names):
    speeds = {}
    for name in names:
        try:
            with open(os.path.join(sysfs_root, "class", "net", name, "speed")) as handle:
                value = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if value > 0:
            speeds[name] = value
    return speeds


def _ip_json(module, args):
    rc, out, err = module.run_command([module.params["ip_binary"], "-j", *args])
    if rc != 0:
        module.fail_json(msg="'ip -j %s' failed (rc %s): %s" % (" ".join(args), rc, err.strip()))
    try:
        return json.loads(out or "[]")
    except ValueError as exc:
        module.fail_json(msg="cannot parse 'ip -j %s' output: %s" % (" ".join(args), exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            control_interface=dict(type="str"),
            data_interfaces=dict(type="list", elements="str"),
            control_ip=dict(type="str"),
            prefer_vpc=dict(type="bool", default=False),
            ip_binary=dict(type="path", default="ip"),
            sysfs_root=dict(type="path", default="/sys"),
            procfs_root=dict(type="path", default="/proc"),
            ib=dict(type="bool", default=False),
            ib_sysfs_root=dict(type="path", default="/sys"),
            ib_hca_prefix=dict(type="str", default="mlx5"),
            ib_min_rate_gbps=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    links = _ip_json(module, ["addr"])
    routes = _ip_json(module, ["route", "show", "default"])
    names = [link.get("ifname") for link in links if link.get("ifname")]
    interfaces = parse_ip_addr(links, _speeds(module.params["sysfs_root"], names))
    try:
        fabric = select_fabric(
            interfaces,
            default_route_interface(routes),
            control_interface=module.params["control_interface"],
            data_interfaces=module.params["data_interfaces"],
            control_ip=module.params["control_ip"],
            prefer_vpc=module.params["prefer_vpc"],
        )
    except FabricError as exc:
        module.fail_json(msg=str(exc))
    try:
        with open(os.path.join(module.params["procfs_root"], "sys", "net", "ipv4", "ip_local_port_range")) as handle:
            fabric["ip_local_port_range"] = handle.read().strip()
    except OSError:
        fabric["ip_local_port_range"] = ""
    facts = {"multinode_fabric": fabric}
    result = {}
    if module.params["ib"]:
        try:
            facts["multinode_ib"] = summarize(
                read_hcas(module.params["ib_sysfs_root"]),
                hca_prefix=module.params["ib_hca_prefix"],
                min_rate_gbps=module.params["ib_min_rate_gbps"],
            )
        except IbError as exc:
            result["ib_error"] = str(exc)
    module.exit_json(changed=False, ansible_facts=facts, **result)


if __name__ == "__main__":
    main()
