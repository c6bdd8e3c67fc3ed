# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""This node's fabric inside a SLURM job, by the collection's own rules.

The slurm role copies this file, plugins/module_utils/_fabric.py and _ib.py into the job's directory
(shared storage); every step of the job runs it on its node with the job's Python and evaluates
what it prints: ``NODE_IP``, ``NCCL_SOCKET_IFNAME``, ``GLOO_SOCKET_IFNAME`` and, where active
InfiniBand HCAs are found, ``NCCL_IB_HCA`` - the same choice fabric_facts and ib_facts make on the
hosts path (an explicit interface > bond0 > the droplet's eth2 and its rails > the default route).
A node whose fabric cannot be used ends the step with the reason (the job's output shows it).

Environment: MNV_CONTROL_INTERFACE (slurm_fabric_interface), MNV_IB_HCA (slurm_ib_hcas: given, it
wins), MNV_SYSFS_ROOT (default /sys).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fabric
import _ib


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    data = json.loads(out or "[]")
    return data if isinstance(data, list) else []


def main() -> int:
    env = os.environ
    node = os.uname().nodename
    try:
        fabric = _fabric.select_fabric(
            _fabric.parse_ip_addr(_ip_json("addr")),
            _fabric.default_route_interface(_ip_json("route")),
            control_interface=env.get("MNV_CONTROL_INTERFACE") or None,
        )
        ib = _ib.summarize(_ib.read_hcas(env.get("MNV_SYSFS_ROOT") or "/sys"))
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        # the rules name the hosts path's variable; here the inventory's is slurm_fabric_interface
        why = str(exc).replace("control_interface", "slurm_fabric_interface")
        print(f"multinode-vllm: the fabric of {node} cannot be used: {why}", file=sys.stderr)
        return 1
    found = {
        "NODE_IP": fabric["control_ip"],
        "NCCL_SOCKET_IFNAME": fabric["nccl_socket_ifname"],
        "GLOO_SOCKET_IFNAME": fabric["gloo_socket_ifname"],
    }
    hca = env.get("MNV_IB_HCA") or ib["nccl_ib_hca"]
    if hca:
        found["NCCL_IB_HCA"] = hca
    said = ", ".join(f"{k}={v}" for k, v in found.items())
    print(f"multinode-vllm: {node} fabric ({fabric['source']}): {said}", file=sys.stderr)
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in found.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
