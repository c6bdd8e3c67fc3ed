#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: NVIDIA GPUs, driver, memory, NVLink and fabric state of a node, through NVML
version_added: "0.1.0"
description:
  - Reads the node's GPUs through NVML (the C(pynvml) module of C(nvidia-ml-py)) and the
    driver's C(libnvidia-ml.so.1) - GPU count, names, UUIDs, memory, driver and CUDA versions,
    the state of every NVLink of every GPU, and the GPU fabric (NVSwitch) state where NVML
    reports one - and returns them as C(ansible_facts.multinode_gpu).
  - With O(expected_gpu_count), O(require_nvlink) and O(expected_driver_version) it fails with
    one sentence per problem naming the GPU (index and UUID) and the link, for example that
    NVLink 5 of GPU 3 is inactive and 17 of its 18 links are active.
  - A GPU whose fabric registration has not completed (nvidia-fabricmanager not running) always
    fails the module; so does a GPU NVML cannot read (for example C(GPU is lost)).
  - When NVML cannot start (no driver, driver not loaded, library and kernel module of different
    versions) the module fails with what is wrong and points at the prepare phase
    (C(ansible-playbook site.yml --tags prepare), role C(nvidia_driver)).
  - Read-only; runs in check mode.
options:
  expected_gpu_count:
    description: Number of GPUs NVML must see; unset means no count check.
    type: int
  require_nvlink:
    description:
      - Every GPU must have NVLinks and all of them must be active (HGX/SXM systems).
    type: bool
    default: false
  expected_driver_version:
    description:
      - Driver version the node must run, for example C(550.127.05); a prefix on a dot boundary
        such as C(550) (the branch) or C(550.127) also matches.
    type: str
  missing_ok:
    description:
      - When this interpreter cannot import pynvml, return C(pynvml_missing=true) (and the import
        error's last line) instead of failing, so that the caller installs the bindings and reads again.
    type: bool
    default: false
requirements:
  - nvidia-ml-py (the C(pynvml) module) on the managed node
  - the NVIDIA driver (C(libnvidia-ml.so.1)) on the managed node
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Read the GPUs and check them against the inventory
  multinode.vllm.gpu_facts:
    expected_gpu_count: 8
    require_nvlink: true
    expected_driver_version: "550.127.05"

- name: Only gather the facts
  multinode.vllm.gpu_facts:

- name: Show the smallest GPU memory
  ansible.builtin.debug:
    msg: "{{ ansible_facts['multinode_gpu']['memory_total_min'] }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: when NVML could be initialised
  type: complex
  contains:
    multinode_gpu:
      description: What NVML sees on the node.
      returned: when NVML could be initialised
      type: dict
      sample:
        count: 8
        driver_version: "550.127.05"
        cuda_version: "12.4"
        cuda_driver_version: 12040
        nvlink_total: 144
        nvlink_active: 143
        memory_total_min: 85520809984
        gpus:
          - index: 3
            name: NVIDIA H100 80GB HBM3
            uuid: GPU-0f578c1a-c6e1-5925-b370-f81e2f1dda93
            memory_total: 85520809984
            memory_used: 0
            pci_bus_id: "00000000:5D:00.0"
            nvlinks: {total: 18, active: 17, inactive: [5]}
            fabric_state: completed
            fabric_error: null
            error: null
errors:
  description: One sentence per problem found; empty when every check passed.
  returned: always
  type: list
  elements: str
pynvml_missing:
  description: The interpreter cannot import pynvml (with O(missing_ok); no facts then).
  returned: when pynvml is missing and O(missing_ok)
  type: bool
import_error:
  description: The last line of the import error (with O(missing_ok)).
  returned: when pynvml is missing and O(missing_ok)
  type: str
msg:
  description: What NVML sees, or the problems joined.
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multinode.vllm.plugins.module_utils._nvml import (
    NvmlUnavailable,
    check_gpus,
    read_gpus,
    summary_line,
)

try:
    import pynvml
except ImportError:
    pynvml = None
    PYNVML_IMPORT_ERROR = traceback.format_exc()
else:
    PYNVML_IMPORT_ERROR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            expected_gpu_count=dict(type="int"),
            require_nvlink=dict(type="bool", default=False),
            expected_driver_version=dict(type="str"),
            missing_ok=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if pynvml is None and module.params["missing_ok"]:
        last = (PYNVML_IMPORT_ERROR or "").strip().splitlines()[-1:]
        module.exit_json(changed=False, pynvml_missing=True, import_error=last[0] if last else "", errors=[])
    if pynvml is None:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMPORT_ERROR, errors=[])

    p = module.params
    try:
        facts = read_gpus(pynvml)
    except NvmlUnavailable as exc:
        module.fail_json(msg=str(exc), errors=[str(exc)])

    errors = check_gpus(
        facts,
        expected_count=p["expected_gpu_count"],
        require_nvlink=p["require_nvlink"],
        expected_driver=p["expected_driver_version"],
    )
    result = dict(changed=False, ansible_facts=dict(multinode_gpu=facts), errors=errors)
    if errors:
        module.fail_json(msg=" | ".join(errors), **result)
    module.exit_json(msg=summary_line(facts), **result)


if __name__ == "__main__":
    main()
