#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: nvidia_pci_facts
short_description: NVIDIA GPUs and NVSwitches on the PCI bus, with or without a driver
description:
  - Reads C(<sysfs_root>/bus/pci/devices/*/{vendor,device,class}) and counts the NVIDIA
    (vendor C(0x10de)) GPUs (class C(0x03xxxx)) and NVSwitches (class C(0x0680xx), for example
    C(10de:22a3) on HGX H100/H200 baseboards).
  - Also lists the NVSwitch device nodes C(<dev_dir>/nvidia-nvswitch<N>) the driver creates.
  - Needs no driver, so it can decide before the driver is installed whether the node needs
    C(nvidia-fabricmanager) (NVSwitch systems fail CUDA with error 802 without it).
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
    description: Returns C(ansible_facts.multinode_nvidia_pci).
options:
  sysfs_root:
    description: Root of sysfs; tests point it at a fixture tree.
    type: path
    default: /sys
  dev_dir:
    description: Directory holding the device nodes.
    type: path
    default: /dev
"""

EXAMPLES = r"""
- name: Find out whether the node has NVSwitches
  multinode.vllm.nvidia_pci_facts:

- name: Install fabric manager on NVSwitch systems
  ansible.builtin.apt:
    name: nvidia-fabricmanager-580
  when: ansible_facts['multinode_nvidia_pci']['nvswitch']
"""

RETURN = r"""
ansible_facts:
  description: The PCI facts.
  returned: always
  type: dict
  contains:
    multinode_nvidia_pci:
      description: GPUs and NVSwitches found.
      type: dict
      returned: always
      sample:
        gpu_count: 8
        gpus: [{address: "0000:18:00.0", device: "0x2330"}]
        nvswitch_count: 4
        nvswitches: [{address: "0000:05:00.0", device: "0x22a3"}]
        nvswitch_device_nodes: [/dev/nvidia-nvswitch0]
        nvswitch: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._nvidia_pci import read_facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysfs_root=dict(type="path", default="/sys"),
            dev_dir=dict(type="path", default="/dev"),
        ),
        supports_check_mode=True,
    )
    facts = read_facts(module.params["sysfs_root"], module.params["dev_dir"])
    module.exit_json(changed=False, ansible_facts={"multinode_nvidia_pci": facts})


if __name__ == "__main__":
    main()
