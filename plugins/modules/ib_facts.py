#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ib_facts
short_description: Read InfiniBand HCAs, ports, states and rates from sysfs
description:
  - Reads C(<sysfs_root>/class/infiniband/<hca>/ports/<n>/{state,phys_state,rate,link_layer}).
  - Returns the C(NCCL_IB_HCA) value to use (active HCAs matching O(hca_prefix)).
  - Optionally requires a number of active ports at a minimum rate.
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
    description: Returns C(ansible_facts.multinode_ib).
options:
  sysfs_root:
    description: Root of sysfs; tests point it at a fixture tree.
    type: path
    default: /sys
  hca_prefix:
    description: Only HCAs whose name starts with this are used for NCCL.
    type: str
    default: mlx5
  require_active_ports:
    description: Fail unless at least this many ports are active (and fast enough).
    type: int
    default: 0
  min_rate_gbps:
    description: Ports slower than this do not count as usable.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Require eight active 400G ports
  multinode.vllm.ib_facts:
    require_active_ports: 8
    min_rate_gbps: 400
"""

RETURN = r"""
ansible_facts:
  description: The InfiniBand facts.
  returned: always
  type: dict
  contains:
    multinode_ib:
      description: present, hcas, active_ports, nccl_ib_hca and problems.
      type: dict
      returned: always
      sample:
        present: true
        active_ports: 8
        nccl_ib_hca: mlx5_0,mlx5_1
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._ib import IbError, read_hcas, summarize


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysfs_root=dict(type="path", default="/sys"),
            hca_prefix=dict(type="str", default="mlx5"),
            require_active_ports=dict(type="int", default=0),
            min_rate_gbps=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    hcas = read_hcas(module.params["sysfs_root"])
    try:
        facts = summarize(
            hcas,
            hca_prefix=module.params["hca_prefix"],
            require_active_ports=module.params["require_active_ports"],
            min_rate_gbps=module.params["min_rate_gbps"],
        )
    except IbError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, ansible_facts={"multinode_ib": facts})


if __name__ == "__main__":
    main()
