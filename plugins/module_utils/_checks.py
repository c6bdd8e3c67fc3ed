# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Type and value checks of inventory variables for the validate phase. Pure functions, stdlib only.

The validate role collects, for every host, the value of each variable it checks (the inventory's,
else the product default) and hands them here with a table of rules. Each problem names the
variable, its value, the hosts that have it and what a valid value looks like, so that the role's
message can say what to change. Secrets never reach this module: the role passes only their type
and whether they are empty.

Rule kinds (``{"kind": ..., ...}``):

    port      an integer in 1-65535; ``clash_when`` (a dict of variable -> value) puts the port
              into the clash check only when those variables have those values on the host
    int       an integer >= ``min`` (default 1)
    fraction  a number in (0, 1]
    choice    one of ``choices``
    subset    a list whose items are all in ``choices``
    bool      true or false (or a string Ansible reads as a boolean)
    args      a list of command-line arguments (strings or numbers), not one string
    strings   a list of non-empty strings
    env       a mapping of environment variable names to scalar values
    envname   an environment variable name
    abspath   an absolute path
    nonempty  a non-empty string without white space around it
    name      a string without white space (may be empty)
    secret    a string (may be empty); the role passes ``{"secret_type": ..., "empty": ...}``
"""

from __future__ import annotations

import ipaddress
import json
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from numbers import Number
from typing import Any

from ansible_collections.multinode.vllm.plugins.module_utils._firewall import port_span

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGITS = re.compile(r"^[0-9]+$")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_MODEL_PATH = re.compile(r"/[^\s]*[^\s/][^\s]*")
_NUMBER = re.compile(r"^[0-9]*[.]?[0-9]+$")
_SECRET_TYPES = {"number": "a number", "list": "a list", "mapping": "a mapping", "boolean": "a boolean", "null": "null"}
_BOOL_STRINGS = {"true", "false", "yes", "no", "on", "off", "y", "n", "1", "0"}

#: The check each kind belongs to (one task of the validate role per check).
CHECKS = {
    "port": "port",
    "int": "number",
    "fraction": "fraction",
    "choice": "choice",
    "subset": "choice",
    "bool": "bool",
    "args": "shape",
    "strings": "shape",
    "env": "shape",
    "envname": "name",
    "abspath": "path",
    "nonempty": "name",
    "model": "name",
    "name": "name",
    "secret": "secret",
    "cidrs": "shape",
    "ports": "shape",
}


def _is_int(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and bool(_DIGITS.match(value))
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null (an empty YAML value)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (Sequence, Set)):
        return "a list"
    return "a value of another kind"  # never Ansible's internal class names


def _plain(value: Any) -> Any:
    """Plain dicts, lists and scalars (Ansible hands in its own tagged and lazy container classes)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (Sequence, Set)) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def show(value: Any) -> str:
    """The value as the message shows it: scalars as written, lists and mappings as JSON."""
    if isinstance(value, (Mapping, Sequence, Set)) and not isinstance(value, str):
        try:
            return json.dumps(_plain(value), sort_keys=True, default=str)
        except (TypeError, ValueError):
            return "(a value that cannot be shown)"
    if isinstance(value, str) and (value == "" or value != value.strip()):
        return json.dumps(value)
    return str(value)


def check_value(rule: dict[str, Any], value: Any) -> str | None:
    """None when ``value`` satisfies ``rule``; else what a valid value is (the fix)."""
    kind = rule.get("kind")
    if kind == "port":
        if _is_int(value) and 1 <= int(value) <= 65535:
            return None
        return "an integer in 1-65535"
    if kind == "int":
        low = int(rule.get("min", 1))
        if _is_int(value) and int(value) >= low:
            return None
        return f"a whole number >= {low}" + (" (0: vLLM's default)" if low == 0 else "")
    if kind == "fraction":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(value, str) and bool(_NUMBER.match(value))
        )
        if ok and 0 < float(value) <= 1:
            return None
        return "a number above 0 and at most 1, e.g. 0.9 (a fraction of each GPU's memory)"
    if kind == "choice":
        choices = list(rule.get("choices") or [])
        if isinstance(value, str) and value in choices:
            return None
        return "one of " + ", ".join(str(c) if c != "" else '"" (empty)' for c in choices)
    if kind == "subset":
        choices = list(rule.get("choices") or [])
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v in choices for v in value):
            return None
        return "a list of " + ", ".join(str(c) for c in choices)
    if kind == "bool":
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_STRINGS):
            return None
        if isinstance(value, int) and value in (0, 1):
            return None
        return "true or false"
    if kind == "args":
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
        ):
            return _args_items(value, rule.get("managed") or {})
        if isinstance(value, str):
            return 'a YAML list with one item per argument, e.g. ["--max-num-seqs", "64"], not one string'
        return 'a YAML list of strings, e.g. ["--max-num-seqs", "64"]'
    if kind == "strings":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
            return None
        return 'a YAML list of non-empty strings, e.g. ["vllm==0.17.1", "ray[default]"]'
    if kind == "env":
        if isinstance(value, dict) and all(
            isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, (str, int, float, bool))
            for k, v in value.items()
        ):
            return None
        return 'a mapping of environment variable names (letters, digits, _) to values, e.g. {NCCL_DEBUG: "INFO"}'
    if kind == "envname":
        if isinstance(value, str) and ENV_NAME.match(value):
            return None
        return "an environment variable name: letters, digits and _, not starting with a digit"
    if kind == "abspath":
        if isinstance(value, str) and value.startswith("/") and value == value.strip():
            return None
        return "an absolute path (starting with /), the same on every node"
    if kind == "nonempty":
        if isinstance(value, str) and value.strip() and value == value.strip():
            return None
        return rule.get("want") or "a non-empty string"
    if kind == "cidrs":
        bad = _bad_cidrs(value)
        if bad is None:
            return None
        return f'a YAML list of IPs or CIDRs, e.g. ["10.0.0.0/8", "::/0"] ({bad})'
    if kind == "ports":
        if rule.get("auto") and value == "auto":
            return None
        items = [value] if rule.get("auto") and isinstance(value, str) else value
        bad = _bad_ports(items)
        if bad is None:
            return None
        example = '"auto" or "32768-65535"' if rule.get("auto") else '[6379, "10002-19999"]'
        return f"ports and low-high ranges in 1-65535, e.g. {example} ({bad})"
    if kind == "model":
        # a hub id (org/name, or a legacy name without org) or an absolute path on the nodes
        if (
            isinstance(value, str)
            and (_HUB_ID.fullmatch(value) or _MODEL_PATH.fullmatch(value))
            and ".." not in value.split("/")
        ):
            return None
        return rule.get("want") or "a Hugging Face id (org/name) or an absolute path on the nodes"
    if kind == "name":
        if isinstance(value, str) and not re.search(r"\s", value):
            return None
        return rule.get("want") or "a string without spaces"
    if kind == "secret":
        if isinstance(value, dict) and value.get("secret_type") == "string":
            return None
        return "a quoted string in the vault (a YAML number or list is not a key)"
    raise ValueError(f"unknown rule kind {kind!r}")


_SECRET_FLAG = re.compile(r"key|token|secret|password", re.I)
_HIDDEN = "<value not shown>"


def _mask_args(value: Any) -> list[Any]:
    """The list as a message may show it: the value of a flag that looks secret (--api-key X,
    --hf-token=X) replaced."""
    out: list[Any] = []
    hide_next = False
    for item in value:
        text = str(item)
        if hide_next and not text.startswith("-"):
            out.append(_HIDDEN)
            hide_next = False
            continue
        flag, eq, _val = text.partition("=")
        hide_next = text.startswith("-") and bool(_SECRET_FLAG.search(flag)) and not eq
        out.append(f"{flag}={_HIDDEN}" if eq and flag.startswith("-") and _SECRET_FLAG.search(flag) else item)
    return out


def _bad_cidrs(value: Any) -> str | None:
    """None when ``value`` is a list of IPv4/IPv6 addresses or networks; else the first bad item."""
    if not isinstance(value, (list, tuple)):
        return "not a list"
    for item in value:
        try:
            ipaddress.ip_network(str(item).strip(), strict=False)
        except ValueError:
            return f"{item!r} is not an IP or a CIDR"
    return None


def _bad_ports(value: Any) -> str | None:
    """None when ``value`` is a list of ports and "low-high" ranges in 1-65535; else the first bad item."""
    if not isinstance(value, (list, tuple)):
        return "not a list"
    for item in value:
        try:
            port_span(item)
        except ValueError as exc:
            return str(exc)
    return None


def _args_items(value: Any, managed: dict[str, str]) -> str | None:
    """One flag or one value per item, and no flag the collection sets itself from a variable."""
    for item in value:
        text = str(item).strip()
        if text.startswith("-") and "=" not in text and re.search(r"\s", text):
            flag, rest = text.split(None, 1)
            return f'one item per flag and per value: "{text}" is two; write "{flag}", "{rest}" as two items'
    for item in value:
        flag = str(item).strip().split("=", 1)[0]
        if flag in managed:
            source = managed[flag]
            if re.fullmatch(r"[a-z0-9_]+", source):
                return (
                    f"{flag} is set by the collection from {source}, which the plan and the other nodes use: "
                    f"set {source} instead and drop {flag} from the list"
                )
            return f"{flag} is set by the collection ({source}): drop {flag} from the list"
    return None


def secret_shape(value: Any, salt: bytes | None = None) -> dict[str, Any]:
    """What the checks may know of a secret: its type and whether it is empty, never its value.

    With ``salt`` (random, one per check run), also a salted digest: equal secrets on two hosts have
    equal digests within the run (the cluster-wide check compares them), and none is worth keeping."""
    if value is None:
        kind = "null"
    elif isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, Number):
        kind = "number"
    elif isinstance(value, Mapping):
        kind = "mapping"
    elif isinstance(value, Iterable):
        kind = "list"
    else:
        kind = "other"
    shape: dict[str, Any] = {"secret_type": kind, "empty": value is None or value == ""}
    if salt is not None:
        shape["digest"] = hashlib.sha256(salt + repr(value).encode()).hexdigest()
    return shape


def host_values(
    hosts: Mapping[str, Mapping[str, Any]], rules: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """host -> variable -> the value the checks see: the host's own, else the product default.

    ``hosts`` holds what each host defines (host -> variable -> value). A variable the host leaves
    unset is checked at ``defaults`` unless its rule is ``optional`` (a default that needs facts);
    absent from both, it is not checked. Secrets become ``secret_shape`` so that their value goes
    nowhere.
    """
    out: dict[str, dict[str, Any]] = {}
    salt = os.urandom(16)
    for host, own in hosts.items():
        row: dict[str, Any] = {}
        for var, rule in rules.items():
            if var in own:
                value = own[var]
            elif var in defaults and not rule.get("optional", False):
                value = defaults[var]
            else:
                continue
            row[var] = secret_shape(value, salt) if rule.get("kind") == "secret" else value
        out[str(host)] = row
    return out


def invalid_vars(values: dict[str, dict[str, Any]], rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Problems of ``values`` (host -> variable -> value) against ``rules`` (variable -> rule).

    One problem per variable and value, with every host that has it: ``{"check", "var", "value",
    "hosts", "want", "text"}``; ``text`` reads "var=value on host1, host2 (want)". Variables a host
    does not have are not checked (the role leaves out optional ones the inventory does not set).
    """
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for host, host_values in values.items():
        for var, rule in rules.items():
            if var not in host_values:
                continue
            value = host_values[var]
            want = check_value(rule, value)
            if want is None:
                continue
            secret = rule.get("kind") == "secret"
            if secret:
                # only the type of a secret is known here, never its value
                secret_type = str(value.get("secret_type")) if isinstance(value, dict) else ""
                shown = "is " + _SECRET_TYPES.get(secret_type, "not a string")
            elif rule.get("kind") == "args" and isinstance(value, (list, tuple)):
                value = _mask_args(value)
                shown = show(value)
            elif rule.get("kind") == "env" and isinstance(value, dict):
                # names only: an environment may hold tokens (HF_TOKEN, WANDB_API_KEY ...)
                value = {str(k): _HIDDEN for k in value}
                shown = show(value)
            else:
                shown = show(value)
            key = (var, shown)
            if key not in found:
                found[key] = {
                    "check": CHECKS[str(rule["kind"])],
                    "var": var,
                    "value": None if secret else value,
                    "shown": shown,
                    "hosts": [],
                    "want": want,
                }
            found[key]["hosts"].append(host)
    problems = []
    for p in found.values():
        sep = " " if p["check"] == "secret" else "="
        p["text"] = f"{p['var']}{sep}{p['shown']} on {', '.join(p['hosts'])} ({p['want']})"
        problems.append(p)
    return problems


def port_clashes(values: dict[str, dict[str, Any]], rules: dict[str, dict[str, Any]]) -> list[str]:
    """Hosts where two of the ports in use share a number: "host: a=8000, b=8000"."""
    clashes = []
    for host, host_values in values.items():
        used: list[tuple[str, str]] = []
        for var, rule in rules.items():
            if rule.get("kind") != "port" or "clash_when" not in rule or var not in host_values:
                continue
            when = rule.get("clash_when") or {}
            if all(_same(host_values.get(k), v) for k, v in when.items()):
                used.append((var, str(host_values[var])))
        numbers = [number for _var, number in used]
        shared = sorted({n for n in numbers if numbers.count(n) > 1})
        for number in shared:
            names = [v for v, n in used if n == number]
            clashes.append(f"{host}: " + ", ".join(f"{v}={number}" for v in names))
    return clashes


def _canonical(value: Any) -> str:
    """One spelling per value for comparing hosts: 8000 and "8000" agree, so do true and "yes"."""
    if _is_int(value):
        return str(int(value))
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_STRINGS - {"0", "1"}):
        return str(_same(value, True)).lower()
    return show(value)


def cluster_mismatches(values: dict[str, dict[str, Any]], rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings with ``cluster: true`` that are not one value on every host.

    Each: {var, text: "multinode_vllm_port: 8000 on node1, node2; 8001 on node3"}; hosts listed
    under the value they have, the largest group first.
    """
    out = []
    for var, rule in rules.items():
        if not rule.get("cluster"):
            continue
        secret = rule.get("kind") == "secret"
        groups: dict[str, list[str]] = {}
        shown: dict[str, str] = {}
        for host, host_values in values.items():
            if var not in host_values:
                continue
            value = host_values[var]
            if secret:  # compared by the salted digest (host_values), never shown
                key = str(value.get("digest", "")) if isinstance(value, dict) else ""
                shown.setdefault(key, "an empty value" if isinstance(value, dict) and value.get("empty") else "")
            else:
                key = _canonical(value)
                shown.setdefault(key, show(value))
            groups.setdefault(key, []).append(host)
        if len(groups) > 1:
            ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1]))
            if secret:
                names = iter(("one value", "another", "a third", "a fourth"))
                for k, _hosts in ordered:
                    shown[k] = shown[k] or next(names, "yet another")
            text = "; ".join(f"{shown[k]} on {', '.join(sorted(hosts))}" for k, hosts in ordered)
            tail = " (a secret: the values are not shown)" if secret else ""
            out.append({"var": var, "text": f"{var}: {text}{tail}"})
    return out


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        if isinstance(actual, str):
            return (actual.lower() in ("true", "yes", "on", "y", "1")) == expected
        return bool(actual) == expected
    return str(actual) == str(expected)
