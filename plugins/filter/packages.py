# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installed packages against a wanted version, as a Jinja2 filter for the nvidia_driver role."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: outdated_packages
short_description: The packages not installed at the wanted version or branch
description:
  - Takes C(ansible_facts.packages) (from package_facts) and returns C(name version) for each of
    O(names) not at O(version) (Debian versions C(VERSION-*)), or where O(version) is empty not on
    O(branch) (C(BRANCH.*)); C(name not installed) for a package that is absent.
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: C(ansible_facts.packages).
    type: dict
    required: true
  names:
    description: The packages to look at.
    type: list
    elements: str
    required: true
  version:
    description: The exact upstream version wanted; empty for the branch.
    type: str
    default: ""
  branch:
    description: The branch wanted (the version's first number) when O(version) is empty.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Show the driver packages to change
  ansible.builtin.debug:
    msg: "{{ ansible_facts['packages'] | multinode.vllm.outdated_packages(['nvidia-driver'], branch='550') }}"
"""

RETURN = r"""
_value:
  description: Strings "name version" or "name not installed", in the order of O(names).
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._packages import outdated


def outdated_packages(packages, names, version="", branch=""):
    if not isinstance(packages, dict) or not isinstance(names, (list, tuple)):
        raise AnsibleFilterError("outdated_packages: expects ansible_facts.packages and a list of names")
    if not version and not branch:
        raise AnsibleFilterError("outdated_packages: give a version or a branch")
    return outdated(packages, names, version, branch)


class FilterModule:
    def filters(self):
        return {"outdated_packages": outdated_packages}
