#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: model_copy
short_description: Mirror a model directory on the node (shared storage to local disk), rsync-style
description:
  - Copies O(src) over O(dest) on the node (both absolute paths). A file whose size or
    modification time differs from the source's is copied again (rsync's quick check), so a
    second run copies nothing and a truncated or stale copy is replaced.
  - Every file is written under a hidden temporary name and renamed, so a half-copied file never
    carries its real name. Symlinks that stay inside O(src) (the Hugging Face cache's
    snapshots -> blobs) are recreated as links; others are followed.
  - Nothing in O(dest) that the source lacks is deleted.
  - Needs no rsync on the node (minimal images lack it); the copy runs in the module's Python.
author: multinode.vllm developers (@multinode)
attributes:
  check_mode:
    support: full
    description: Reports what would be copied and copies nothing.
  diff_mode:
    support: none
    description: RV(copied) lists the files.
options:
  src:
    description: The directory to copy from (for example the model on shared storage).
    type: path
    required: true
  dest:
    description: The directory to copy to (created when missing). Must not overlap O(src).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Copy the model from shared storage to the node's disk
  multinode.vllm.model_copy:
    src: /srv/shared/models/llama-3.1-8b
    dest: /var/lib/models/llama-3.1-8b
"""

RETURN = r"""
copied:
  description: The files and links (relative paths) copied, or that would be in check mode; at most 100.
  returned: always
  type: list
  elements: str
copied_count:
  description: How many files and links were (or would be) copied.
  returned: always
  type: int
copied_bytes:
  description: Bytes copied (0 in check mode).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._model import (
    ModelFileError,
    apply_copy,
    plan_copy,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    src, dest = module.params["src"], module.params["dest"]
    try:
        actions = plan_copy(src, dest)
    except ModelFileError as exc:
        module.fail_json(msg=str(exc))
    result = dict(
        changed=bool(actions),
        copied=[a["path"] for a in actions[:100]],
        copied_count=len(actions),
        copied_bytes=0,
    )
    if actions and not module.check_mode:
        try:
            result["copied_bytes"] = apply_copy(src, dest, actions)
        except (OSError, ModelFileError) as exc:
            module.fail_json(msg=f"copying {src} to {dest} failed: {exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
