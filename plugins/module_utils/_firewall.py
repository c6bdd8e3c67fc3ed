# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the cluster firewall lets in: member addresses, client CIDRs, port sets. Pure functions.

The firewall role renders these into its own nftables table; every error names the variable to
fix, so a bad value stops the play before the ruleset is touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

MAX_PORT = 65535


class FirewallError(ValueError):
    """A bad address or port; the message names the variable and a valid example."""


def split_addresses(values: Any, variable: str) -> dict[str, list[str]]:
    """IPs and CIDRs -> ``{"ipv4": [...], "ipv6": [...]}``, normalised, sorted, unique.

    Overlapping entries stay as they are: the nftables sets use ``auto-merge``.
    """
    if values is None:
        values = []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise FirewallError(f"{variable} must be a list of IP addresses or CIDRs (e.g. ['10.0.0.0/8']), not {values!r}")
    found: dict[int, set[Any]] = {4: set(), 6: set()}
    for value in values:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise FirewallError(
                f"{variable}: {value!r} is not an IP address or CIDR (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
        found[net.version].add(net)
    return {
        "ipv4": [_show(n) for n in sorted(found[4])],
        "ipv6": [_show(n) for n in sorted(found[6])],
    }


def _show(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def member_addresses(fabrics: Mapping[str, Any], extra: Any = None) -> dict[str, list[str]]:
    """The cluster members: each node's control IP and the IPv4 addresses of its data (NCCL)
    interfaces, from the preflight facts (``ansible_facts.multinode_fabric`` per host), plus
    ``cluster_firewall_extra_members``."""
    addresses: list[str] = []
    missing = [
        host for host, fabric in fabrics.items() if not isinstance(fabric, Mapping) or not fabric.get("control_ip")
    ]
    if missing:
        raise FirewallError(
            f"no fabric facts for {', '.join(sorted(missing))}: the firewall needs every cluster member's addresses; "
            "run the preflight phase first and do not --limit the cluster phase to part of the cluster"
        )
    for fabric in fabrics.values():
        addresses.append(str(fabric["control_ip"]))
        interfaces = fabric.get("interfaces") or {}
        for name in [fabric.get("control_interface"), *(fabric.get("data_interfaces") or [])]:
            for addr in (interfaces.get(name) or {}).get("ipv4") or []:
                if addr.get("address"):
                    addresses.append(str(addr["address"]))
    members = split_addresses(addresses, "multinode_fabric facts")
    more = split_addresses(extra, "cluster_firewall_extra_members")
    return {
        "ipv4": sorted(set(members["ipv4"]) | set(more["ipv4"]), key=_sort_key),
        "ipv6": sorted(set(members["ipv6"]) | set(more["ipv6"]), key=_sort_key),
    }


def _sort_key(value: str) -> Any:
    return ipaddress.ip_network(value, strict=False)


def port_span(entry: Any) -> tuple[int, int]:
    """One port or ``"low-high"`` range in 1-65535 -> ``(low, high)``; ValueError saying what is wrong.

    The one rule for port lists: validate's shape check and the firewall's ruleset both use it.
    Digits only (no sign, no spaces inside, no ``_``), and a bool is not a port.
    """
    if isinstance(entry, bool):
        raise ValueError(f"{entry!r} is not a port")
    parts = str(entry).strip().split("-")
    if len(parts) > 2 or not all(p.isascii() and p.isdigit() and 1 <= int(p) <= MAX_PORT for p in parts):
        raise ValueError(f"{entry!r} is not a port or a low-high range")
    low, high = int(parts[0]), int(parts[-1])
    if low > high:
        raise ValueError(f"{entry!r} runs from high to low")
    return low, high


def port_ranges(values: Any, variable: str) -> list[str]:
    """Ports and ``"A-B"`` ranges -> merged, sorted nftables elements (``"6379"``, ``"10002-19999"``).

    Overlapping or adjacent entries are merged: an nftables interval set refuses overlaps.
    """
    if values is None:
        values = []
    if isinstance(values, (str, int)) or not isinstance(values, Iterable):
        values = [values]
    spans: list[tuple[int, int]] = []
    for entry in values:
        try:
            spans.append(port_span(entry))
        except ValueError as exc:
            why = str(exc)
            fix = "write it low-high" if "high to low" in why else f"ports in 1-{MAX_PORT}, e.g. 6379 or '10002-19999'"
            raise FirewallError(f"{variable}: {why}; {fix}") from None
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged]


def port_overlaps(port: Any, named: Mapping[str, Any]) -> list[str]:
    """The port sets (variable name -> ports and ranges) that hold ``port``: "name (10002-19999)".

    The API port is opened to the API clients (the world by default): it must not be one of the
    ports the cluster uses internally, or the API rule would open that port too.
    """
    try:
        number = int(str(port).strip())
    except ValueError:
        return []  # not a port: the type check says so
    hits = []
    for name, values in named.items():
        for element in port_ranges(values, name):
            low, _sep, high = element.partition("-")
            if int(low) <= number <= int(high or low):
                hits.append(f"{name} ({element})")
    return hits


def dynamic_ports(local_port_range: str) -> str:
    """The ports Ray, NCCL, Gloo and vLLM pick at random: from the start of the kernel's ephemeral
    range (``/proc/sys/net/ipv4/ip_local_port_range``) to 65535 (Ray draws above the range's end)."""
    parts = str(local_port_range).split()
    try:
        low = int(parts[0])
    except (IndexError, ValueError):
        raise FirewallError(
            f"cannot read the ephemeral port range from {local_port_range!r}: set cluster_firewall_dynamic_ports "
            "(e.g. '32768-65535')"
        ) from None
    if not 1 <= low <= MAX_PORT:
        raise FirewallError(f"ephemeral port range {local_port_range!r} is out of 1-{MAX_PORT}")
    return f"{low}-{MAX_PORT}"
