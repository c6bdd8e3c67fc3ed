# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""InfiniBand HCAs from sysfs (/sys/class/infiniband). Pure functions over a root path."""

from __future__ import annotations

import os
import re
from typing import Any


class IbError(ValueError):
    """A requirement on the HCAs is not met; the message names HCA, port and numbers."""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _state(text: str) -> str:
    # "4: ACTIVE" -> "ACTIVE"; "5: LinkUp" -> "LinkUp"
    return text.split(":", 1)[1].strip() if ":" in text else text


def _rate_gbps(text: str) -> float:
    m = re.match(r"\s*([0-9.]+)\s*Gb/sec", text)
    return float(m.group(1)) if m else 0.0


def _natural(name: str) -> tuple[str, int]:
    m = re.match(r"^(.*?)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def read_hcas(sysfs_root: str) -> dict[str, Any]:
    """Every HCA and port under <root>/class/infiniband."""
    base = os.path.join(sysfs_root, "class", "infiniband")
    hcas: dict[str, Any] = {}
    if not os.path.isdir(base):
        return hcas
    for hca in sorted(os.listdir(base), key=_natural):
        ports_dir = os.path.join(base, hca, "ports")
        ports: dict[str, Any] = {}
        if os.path.isdir(ports_dir):
            for port in sorted(os.listdir(ports_dir), key=_natural):
                p = os.path.join(ports_dir, port)
                rate_text = _read(os.path.join(p, "rate"))
                ports[port] = {
                    "state": _state(_read(os.path.join(p, "state"))),
                    "phys_state": _state(_read(os.path.join(p, "phys_state"))),
                    "rate": rate_text,
                    "rate_gbps": _rate_gbps(rate_text),
                    "link_layer": _read(os.path.join(p, "link_layer")),
                }
        hcas[hca] = {"ports": ports}
    return hcas


def summarize(
    hcas: dict[str, Any], *, hca_prefix: str = "mlx5", require_active_ports: int = 0, min_rate_gbps: float = 0
) -> dict[str, Any]:
    """Facts plus the NCCL_IB_HCA value; raises IbError when the requirements are not met."""
    problems: list[str] = []
    usable: list[str] = []
    active_ports = 0
    for hca, info in hcas.items():
        if not hca.startswith(hca_prefix):
            continue
        hca_ok = False
        for port, p in info["ports"].items():
            if p["state"] != "ACTIVE":
                problems.append(f"{hca} port {port} is {p['state'] or 'unknown'} ({p['phys_state'] or '?'})")
                continue
            if min_rate_gbps and p["rate_gbps"] < min_rate_gbps:
                problems.append(
                    f"{hca} port {port} runs at {p['rate_gbps']:g} Gb/s, below min_rate_gbps={min_rate_gbps:g}"
                )
                continue
            active_ports += 1
            hca_ok = True
        if hca_ok:
            usable.append(hca)
    facts = {
        "present": bool(hcas),
        "hcas": hcas,
        "active_ports": active_ports,
        "nccl_ib_hca": ",".join(usable),
        "problems": problems,
    }
    if require_active_ports and active_ports < require_active_ports:
        if not hcas:
            raise IbError(
                f"no InfiniBand HCA found (require_active_ports={require_active_ports}): NCCL would fall back to "
                "TCP sockets; install the MLNX/DOCA OFED stack or lower ib_facts_require_active_ports"
            )
        detail = "; ".join(problems) or f"no {hca_prefix}* HCA"
        raise IbError(
            f"{active_ports} of the required {require_active_ports} InfiniBand ports are active "
            f"and fast enough: {detail}"
        )
    return facts
