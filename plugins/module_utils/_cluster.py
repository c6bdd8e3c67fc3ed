# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cross-host views of the cluster for the validate and preflight phases. Pure functions, stdlib only.

The roles hand in host name -> that host's variables (the filters in plugins/filter/ read them
from ``hostvars``, leaving out what is undefined); every function here returns plain lists and
strings for the role's asserts and messages, in the order of the hosts given.

One rule each: duplicate values over hosts (``duplicates``: SSH addresses in validate, control IPs
in preflight), names nothing resolves, and the preflight checks across nodes (one driver, one GPU
count, NVLinks up, enough InfiniBand ports, one control address per node in one subnet).
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

HostVars = Mapping[str, Mapping[str, Any]]


def host_vars(
    hostvars: Mapping[str, Any], hosts: Iterable[str], names: Iterable[str], undefined: Any = ()
) -> dict[str, dict[str, Any]]:
    """host -> {name: value} for the ``names`` each host defines; values of type ``undefined`` are left out.

    ``hostvars`` is Ansible's (a template that names an undefined variable reads as a jinja2
    Undefined: the filters pass that type, so such a variable counts as unset, as ``is defined``
    would say) or any mapping of mappings.
    """
    wanted = list(names)
    out: dict[str, dict[str, Any]] = {}
    for host in hosts:
        source = hostvars[host]
        row: dict[str, Any] = {}
        for name in wanted:
            if name in source:
                value = source[name]
                if not (undefined and isinstance(value, undefined)):
                    row[name] = value
        out[str(host)] = row
    return out


def undefined_refs(
    hostvars: Mapping[str, Any], hosts: Iterable[str], names: Iterable[str], undefined: Any
) -> list[dict[str, Any]]:
    """The variables a host sets to a template that names an undefined variable (a vault variable
    whose file was not loaded): [{var, hosts, missing}], one per variable and missing name.

    Such a value reads as unset, so the product default would silently take its place (an empty
    secret). ``missing`` is the undefined name when Ansible tells it.
    """
    found: dict[tuple[str, str], list[str]] = {}
    for host in hosts:
        source = hostvars[host]
        for name in names:
            if name in source:
                value = source[name]
                if isinstance(value, undefined):
                    missing = str(getattr(value, "_undefined_name", None) or "a variable")
                    found.setdefault((name, missing), []).append(str(host))
    return [{"var": var, "missing": missing, "hosts": hs} for (var, missing), hs in found.items()]


def unknown_names(
    defined: Mapping[str, Iterable[str]],
    specs: Iterable[Mapping[str, Any]],
    known: Iterable[str],
    prefixes: Iterable[str],
) -> list[dict[str, Any]]:
    """Variables with one of the roles' prefixes that no role knows (a misspelling is silently
    ignored otherwise): [{var, hosts, suggestion}], the suggestion from the known names.

    ``defined``: host -> the variable names it has; ``specs``: the roles' argument_specs.yml
    documents; ``known``: more names (the roles' defaults).
    """
    names = set(known)
    for doc in specs:
        for entry in ((doc or {}).get("argument_specs") or {}).values():
            names.update(((entry or {}).get("options") or {}).keys())
    starts = tuple(prefixes)
    found: dict[str, list[str]] = {}
    for host, host_names in defined.items():
        for name in host_names:
            if name.startswith(starts) and name not in names:
                found.setdefault(name, []).append(str(host))
    ordered = sorted(names)
    return [
        {
            "var": var,
            "hosts": hosts,
            "suggestion": next(iter(difflib.get_close_matches(var, ordered, n=1, cutoff=0.75)), ""),
        }
        for var, hosts in sorted(found.items())
    ]


def duplicates(pairs: Iterable[tuple[str, Any]]) -> list[tuple[Any, list[str]]]:
    """(value, hosts) for every value more than one host has, in the order values first appear."""
    seen: dict[Any, list[str]] = {}
    for host, value in pairs:
        seen.setdefault(value, []).append(host)
    return [(value, hosts) for value, hosts in seen.items() if len(hosts) > 1]


# --- validate: the inventory ---------------------------------------------------------------------


def ssh_address(host: str, hv: Mapping[str, Any]) -> str:
    """ "ansible_host:ansible_port" as Ansible dials it (the host name and 22 where unset)."""
    return f"{hv.get('ansible_host', host)}:{hv.get('ansible_port', 22)}"


def duplicate_addresses(hosts: HostVars) -> list[str]:
    """SSH addresses more than one host uses: "192.0.2.11:22 (node1, node2)"."""
    pairs = [(host, ssh_address(host, hv)) for host, hv in hosts.items()]
    return [f"{addr} ({', '.join(names)})" for addr, names in duplicates(pairs)]


def resolves(name: str) -> bool:
    """The controller's resolver (NSS, as `getent hosts` asks it) knows ``name``."""
    try:
        return bool(socket.getaddrinfo(name, None))
    except (OSError, UnicodeError):
        return False


def unresolvable(hosts: HostVars, resolves: Callable[[str], bool]) -> list[str]:
    """Hosts without ansible_host, reached over the network, whose name ``resolves`` says is unknown."""
    return [
        host
        for host, hv in hosts.items()
        if "ansible_host" not in hv and hv.get("ansible_connection", "ssh") != "local" and not resolves(host)
    ]


# --- preflight: the facts of every node ----------------------------------------------------------


def to_int(value: Any) -> int:
    """Jinja's ``int`` filter: a number, or 0 for what is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def _facts(hv: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    facts = hv.get("ansible_facts") or {}
    found = facts.get(name, {}) if isinstance(facts, Mapping) else {}
    return found if isinstance(found, Mapping) else {}


def preflight_checks(
    hosts: HostVars,
    driver_version: Any = "",
    ib_required_ports: Any = 0,
    ib_hca_prefix: str = "mlx5",
) -> dict[str, Any]:
    """The preflight checks across nodes, from each host's ``ansible_facts``.

    Returns lists (empty: that check passes, except the per-host rows):
    ``drivers`` [{host, version}], ``driver_mismatch`` ["node2 runs 535.1, preflight_driver_version=550"],
    ``counts`` [{host, count}], ``nvlink_problems`` ["node2 GPU 3 (GPU-…): NVLink 5 inactive, 17 of 18
    active"], ``ib_problems`` ["node1: 0 of 4 ports usable (…)"], ``fabric`` [{host, interface, ip,
    subnet}], ``duplicate_ips`` ["10.0.0.1 on node1, node2"], ``loopback`` ["node1 lo 127.0.0.1"]; and
    for the messages ``drivers_text`` ("node1 runs 550.1, …"), ``counts_text`` ("node1 has 8, …") and
    ``fabric_text`` ("node1 bond0 10.0.0.1 10.0.0.0/24, …").
    """
    wanted = str(driver_version) if driver_version else ""
    required = to_int(ib_required_ports)
    drivers: list[dict[str, Any]] = []
    counts: list[dict[str, Any]] = []
    fabric: list[dict[str, Any]] = []
    mismatch: list[str] = []
    nvlink: list[str] = []
    ib_problems: list[str] = []
    for host, hv in hosts.items():
        gpu = _facts(hv, "multinode_gpu")
        version = gpu.get("driver_version", "none")
        drivers.append({"host": host, "version": version})
        if wanted and not (str(version) == wanted or str(version).startswith(wanted + ".")):
            mismatch.append(f"{host} runs {version}, preflight_driver_version={wanted}")
        counts.append({"host": host, "count": to_int(gpu.get("count", 0))})

        for g in gpu.get("gpus") or []:
            links = g.get("nvlinks") or {}
            where = f"{host} GPU {g.get('index')} ({g.get('uuid')})"
            if to_int(links.get("total", 0)) == 0:
                nvlink.append(f"{where}: no NVLink at all (a PCIe card, or preflight_require_nvlink=false)")
            elif links.get("inactive"):
                down = ", ".join(str(n) for n in links["inactive"])
                nvlink.append(f"{where}: NVLink {down} inactive, {links.get('active')} of {links.get('total')} active")

        ib = _facts(hv, "multinode_ib")
        active = to_int(ib.get("active_ports", 0))
        if active < required:
            why = "; ".join(str(p) for p in ib.get("problems") or []) or (
                f"no {ib_hca_prefix}* HCA" if active == 0 else f"every {ib_hca_prefix}* port it has is usable"
            )
            ib_problems.append(f"{host}: {ib.get('active_ports', 0)} of {required} ports usable ({why})")

        fab = _facts(hv, "multinode_fabric")
        fabric.append(
            {
                "host": host,
                "interface": fab.get("control_interface", ""),
                "ip": fab.get("control_ip", ""),
                "subnet": fab.get("control_subnet", ""),
            }
        )

    shared = duplicates((row["host"], row["ip"]) for row in fabric)
    return {
        "drivers": drivers,
        "drivers_text": ", ".join(f"{d['host']} runs {d['version']}" for d in drivers),
        "driver_mismatch": mismatch,
        "counts": counts,
        "counts_text": ", ".join(f"{c['host']} has {c['count']}" for c in counts),
        "nvlink_problems": nvlink,
        "ib_problems": ib_problems,
        "fabric": fabric,
        "fabric_text": ", ".join(f"{f['host']} {f['interface']} {f['ip']} {f['subnet']}" for f in fabric),
        "duplicate_ips": [f"{ip or 'no address'} on {', '.join(names)}" for ip, names in shared],
        "loopback": [
            f"{row['host']} {row['interface']} {row['ip']}"
            for row in fabric
            if isinstance(row["ip"], str) and row["ip"].startswith("127.")
        ],
    }
