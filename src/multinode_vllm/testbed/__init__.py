"""The simulated cluster: systemd node containers on one machine (see README, "Test bed").

Python API (the ``multinode-vllm testbed`` command and the e2e tests use it)::

    from multinode_vllm import testbed
    tb = testbed.up(testbed.TestbedSpec(name="mnv", nodes=2))   # -> Testbed (idempotent)
    testbed.exec("mnv", 1, ["nvidia-smi"])                      # podman exec in node1
    testbed.set_nvml("mnv", 2, cfg)                             # one node's fake NVML
    testbed.status("mnv"); testbed.down("mnv", purge=False)
"""

from __future__ import annotations

from multinode_vllm.testbed.nodes import Node, Testbed, down, exec, load, status, up
from multinode_vllm.testbed.podman import TestbedError, UsageError
from multinode_vllm.testbed.spec import DEFAULT_NAME, TestbedSpec
from multinode_vllm.testbed.standins import get_nvml, set_ib, set_nvml

__all__ = [
    "DEFAULT_NAME",
    "Node",
    "Testbed",
    "TestbedError",
    "TestbedSpec",
    "UsageError",
    "down",
    "exec",
    "get_nvml",
    "load",
    "set_ib",
    "set_nvml",
    "status",
    "up",
]
