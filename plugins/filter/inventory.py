# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory as the validate phase reads it, as Jinja2 filters: values per host, addresses, names."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# The filters are documented beside this file: host_values.yml, duplicate_addresses.yml,
# unresolvable_hosts.yml, undefined_vars.yml, unknown_vars.yml (a plugin file with DOCUMENTATION would shadow them).

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._checks import host_values as _host_values
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import (
    duplicate_addresses as _duplicate_addresses,
)
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import (
    host_vars,
    undefined_refs,
    unknown_names,
    resolves,
    unresolvable,
)
from jinja2 import Undefined

_ADDRESS_VARS = ("ansible_host", "ansible_port", "ansible_connection")


def _per_host(read, hostvars, hosts, *args):
    """``read(hostvars, hosts, *args)`` with the filters' one message for a bad host list or host."""
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("give the list of hosts to read, e.g. groups['vllm_cluster']")
    try:
        return read(hostvars, hosts, *args)
    except KeyError as exc:
        raise AnsibleFilterError("no such host in hostvars: %s" % exc) from exc


def _read(hostvars, hosts, names):
    return _per_host(host_vars, hostvars, hosts, names, Undefined)


def _names(hostvars, hosts):
    return {str(h): [str(k) for k in hostvars[h]] for h in hosts}


def host_values(hostvars, hosts, rules, defaults=None):
    if not isinstance(rules, dict):
        raise AnsibleFilterError("host_values: expects a dict of rules")
    return _host_values(_read(hostvars, hosts, list(rules)), rules, dict(defaults or {}))


def undefined_vars(hostvars, hosts, names):
    return _per_host(undefined_refs, hostvars, hosts, list(names), Undefined)


def unknown_vars(hostvars, hosts, specs, known, prefixes):
    defined = _per_host(_names, hostvars, hosts)
    return unknown_names(defined, list(specs), list(known), list(prefixes))


def duplicate_addresses(hostvars, hosts):
    return _duplicate_addresses(_read(hostvars, hosts, _ADDRESS_VARS))


def unresolvable_hosts(hostvars, hosts):
    return unresolvable(_read(hostvars, hosts, _ADDRESS_VARS), resolves)


class FilterModule:
    def filters(self):
        return {
            "host_values": host_values,
            "undefined_vars": undefined_vars,
            "unknown_vars": unknown_vars,
            "duplicate_addresses": duplicate_addresses,
            "unresolvable_hosts": unresolvable_hosts,
        }
