# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Choose the control and data (NCCL) interfaces from `ip -j addr` output. Pure functions."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

#: Droplet GPU fabric rails, in NCCL order; eth2's address is the fabric (control) IP.
DROPLET_RAILS = tuple(f"eth{i}" for i in range(2, 10))


class FabricError(ValueError):
    """The chosen interface cannot be used; the message names it and the variable to set."""


def parse_ip_addr(data: list[dict[str, Any]], speeds: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Index `ip -j addr` output by interface name."""
    interfaces: dict[str, dict[str, Any]] = {}
    for link in data:
        name = link.get("ifname")
        if not name:
            continue
        flags = link.get("flags") or []
        ipv4 = [
            {"address": a["local"], "prefixlen": int(a.get("prefixlen", 32))}
            for a in link.get("addr_info") or []
            if a.get("family") == "inet" and a.get("local")
        ]
        operstate = str(link.get("operstate", "UNKNOWN")).upper()
        interfaces[name] = {
            "name": name,
            "up": "UP" in flags and operstate in ("UP", "UNKNOWN"),
            "operstate": operstate,
            "flags": flags,
            "mtu": link.get("mtu"),
            "master": link.get("master"),
            "ipv4": ipv4,
            "speed_mbps": (speeds or {}).get(name),
        }
    return interfaces


def default_route_interface(routes: list[dict[str, Any]]) -> str | None:
    """The device of the default route with the lowest metric."""
    best: tuple[int, str] | None = None
    for route in routes:
        if route.get("dst") == "default" and route.get("dev"):
            metric = int(route.get("metric", 0))
            if best is None or metric < best[0]:
                best = (metric, route["dev"])
    return best[1] if best else None


def _usable(interfaces: dict[str, dict[str, Any]], name: str, variable: str) -> dict[str, Any]:
    iface = interfaces.get(name)
    if iface is None:
        present = ", ".join(sorted(n for n in interfaces if n != "lo")) or "none"
        raise FabricError(
            f"interface {name} does not exist on this host (present: {present}); set {variable} to the fabric interface"
        )
    if not iface["up"]:
        raise FabricError(
            f"interface {name} is down (operstate {iface['operstate']}); bring it up or set {variable} to another one"
        )
    if not iface["ipv4"]:
        raise FabricError(f"interface {name} has no IPv4 address; configure one or set {variable} to another one")
    return iface


def _natural(name: str) -> tuple[str, int]:
    m = re.match(r"^(.*?)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def select_fabric(
    interfaces: dict[str, dict[str, Any]],
    default_iface: str | None,
    *,
    control_interface: str | None = None,
    data_interfaces: list[str] | None = None,
    control_ip: str | None = None,
    prefer_vpc: bool = False,
) -> dict[str, Any]:
    """Apply the rules: explicit > bond0 > droplet (eth2, rails eth2..eth9) > default route."""
    rails = [n for n in DROPLET_RAILS if n in interfaces and interfaces[n]["up"] and interfaces[n]["ipv4"]]
    if control_interface:
        layout, control = "explicit", control_interface
        source = "control_interface was given"
    elif "bond0" in interfaces:
        layout, control = "bond0", "bond0"
        source = "bond0 present (bare metal)"
    elif "eth2" in interfaces:
        layout = "droplet"
        control = "eth1" if prefer_vpc else "eth2"
        source = "droplet layout: eth2 is the first GPU fabric rail" + (
            " (control on the VPC eth1)" if prefer_vpc else ""
        )
    elif default_iface and default_iface != "lo":
        layout, control = "default_route", default_iface
        source = f"no bond0 or eth2: the default route's interface {default_iface}"
    else:
        raise FabricError("no bond0, no eth2 and no default route: set control_interface")
    iface = _usable(interfaces, control, "control_interface")

    if data_interfaces:
        data = list(data_interfaces)
        for name in data:
            _usable(interfaces, name, "data_interfaces")
    elif layout == "droplet":
        data = sorted(rails, key=_natural) or [control]
    else:
        data = [control]

    addresses = iface["ipv4"]
    if control_ip:
        match = [a for a in addresses if a["address"] == control_ip]
        if not match:
            found = ", ".join(a["address"] for a in addresses)
            raise FabricError(f"control_ip {control_ip} is not on {control} (it has {found}); fix control_ip")
        chosen = match[0]
    else:
        chosen = addresses[0]
    network = ipaddress.ip_interface(f"{chosen['address']}/{chosen['prefixlen']}").network
    return {
        "layout": layout,
        "source": source,
        "control_interface": control,
        "control_ip": chosen["address"],
        "control_prefix": chosen["prefixlen"],
        "control_subnet": str(network),
        "control_mtu": iface["mtu"],
        "data_interfaces": data,
        "nccl_socket_ifname": ",".join(data),
        "gloo_socket_ifname": control,
        "interfaces": {
            name: {k: v for k, v in i.items() if k in ("operstate", "up", "mtu", "ipv4", "speed_mbps", "master")}
            for name, i in interfaces.items()
            if name != "lo"
        },
    }
