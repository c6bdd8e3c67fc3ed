# Copyright: multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load this collection's plugins once in the controller, before Ansible forks its workers."""

from __future__ import annotations

DOCUMENTATION = r"""
name: preload
type: aggregate
short_description: Load the collection's filter, lookup and action plugins once in the controller
description:
  - Ansible runs every task of every host in a worker process forked from the controller. A worker that
    templates one of this collection's filters imports the collection's plugin modules and compiles
    their sources (the collection loader keeps no bytecode), then exits; the next worker does it again.
  - At the start of the playbook this callback imports them once in the controller, so that every
    worker inherits them. It prints nothing and changes no result.
  - Enabled by the project's C(ansible.cfg) (C(callbacks_enabled)). Without it, a run is the same, only
    slower.
requirements:
  - enable in configuration (C(callbacks_enabled = multinode.vllm.preload))
"""

import importlib
import pathlib

from ansible.plugins.callback import CallbackBase

# The plugin types a worker loads by name while it templates or runs a task.
PLUGIN_TYPES = ("filter", "lookup", "action")
PACKAGE = "ansible_collections.multinode.vllm.plugins"


def plugin_modules(plugins_dir: pathlib.Path) -> list[str]:
    """The Python module names of the collection's plugins of PLUGIN_TYPES, in a stable order."""
    names = []
    for kind in PLUGIN_TYPES:
        for path in sorted((plugins_dir / kind).glob("*.py")):
            if not path.name.startswith("_"):
                names.append(f"{PACKAGE}.{kind}.{path.stem}")
    return names


def preload(plugins_dir: pathlib.Path) -> list[str]:
    """Import every plugin module; the names that failed (their error shows where a task uses them)."""
    failed = []
    for name in plugin_modules(plugins_dir):
        try:
            importlib.import_module(name)
        except Exception:  # a broken plugin fails its task later, with Ansible's own message
            failed.append(name)
    return failed


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "multinode.vllm.preload"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        failed = preload(pathlib.Path(__file__).resolve().parent.parent)
        if failed:
            self._display.vvv("multinode.vllm.preload: not loaded: %s" % ", ".join(failed))
