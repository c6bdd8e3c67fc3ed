"""The validate phase's variable checks (plugins/module_utils/_checks.py): valid real-world values
pass, wrong ones are named with what a valid value is, secrets are never shown."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.multinode.vllm.plugins.module_utils._checks import (
    check_value,
    cluster_mismatches,
    invalid_vars,
    port_clashes,
)

PORT = {"kind": "port"}


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        (PORT, 8000),
        (PORT, "8000"),  # -e multinode_vllm_port=8000 and INI inventories give strings
        (PORT, 65535),
        ({"kind": "int", "min": 0}, 0),
        ({"kind": "int", "min": 1}, "64"),
        ({"kind": "fraction"}, 0.9),
        ({"kind": "fraction"}, 1),
        ({"kind": "fraction"}, "0.95"),
        ({"kind": "choice", "choices": ["ray", "mp"]}, "mp"),
        ({"kind": "subset", "choices": ["vllm", "ray-head"]}, []),
        ({"kind": "bool"}, True),
        ({"kind": "bool"}, "yes"),
        ({"kind": "bool"}, "False"),
        ({"kind": "args"}, ["--max-num-seqs", 64, "--compilation-config", '{"mode":2}']),
        ({"kind": "args"}, []),
        ({"kind": "strings"}, ["vllm==0.17.1", "ray[default]"]),
        ({"kind": "env"}, {"NCCL_DEBUG": "INFO", "VLLM_CPU_KVCACHE_SPACE": 1, "FLAG": True}),
        ({"kind": "env"}, {}),
        ({"kind": "envname"}, "VLLM_API_KEY"),
        ({"kind": "abspath"}, "/srv/models"),
        ({"kind": "nonempty"}, "meta-llama/Llama-3.1-405B-Instruct"),
        ({"kind": "name"}, ""),
        ({"kind": "name"}, "meta-llama/Llama-3.1-8B"),  # the default served name is the hub id
        ({"kind": "secret"}, {"secret_type": "string", "empty": True}),
    ],
)
def test_valid_values_pass(rule: dict[str, Any], value: Any) -> None:
    assert check_value(rule, value) is None


@pytest.mark.parametrize(
    ("rule", "value", "want"),
    [
        (PORT, 0, "1-65535"),
        (PORT, 70000, "1-65535"),
        (PORT, "http", "1-65535"),
        (PORT, True, "1-65535"),
        (PORT, 80.5, "1-65535"),
        ({"kind": "int", "min": 1}, 0, ">= 1"),
        ({"kind": "int", "min": 0}, -1, ">= 0"),
        ({"kind": "int", "min": 1}, "2GB", ">= 1"),
        ({"kind": "int", "min": 1}, False, ">= 1"),
        ({"kind": "fraction"}, 0, "above 0"),
        ({"kind": "fraction"}, 1.01, "at most 1"),
        ({"kind": "fraction"}, "90%", "at most 1"),
        ({"kind": "choice", "choices": ["ray", "mp"]}, "Ray", "one of ray, mp"),
        ({"kind": "subset", "choices": ["vllm"]}, "vllm", "a list of vllm"),
        ({"kind": "bool"}, "maybe", "true or false"),
        ({"kind": "bool"}, 2, "true or false"),
        ({"kind": "args"}, "--enforce-eager", "not one string"),
        ({"kind": "args"}, [["--a", "b"]], "a YAML list"),
        ({"kind": "args"}, [True], "a YAML list"),
        ({"kind": "strings"}, ["vllm", ""], "non-empty"),
        ({"kind": "env"}, ["A=1"], "a mapping"),
        ({"kind": "env"}, {"1A": "x"}, "a mapping"),
        ({"kind": "env"}, {"A": None}, "a mapping"),
        ({"kind": "envname"}, "API-KEY", "letters, digits"),
        ({"kind": "abspath"}, "models", "absolute"),
        ({"kind": "abspath"}, "/srv/models ", "absolute"),
        ({"kind": "nonempty"}, "", "non-empty"),
        ({"kind": "name"}, "my model", "without spaces"),
        ({"kind": "name"}, 405, "without spaces"),
        ({"kind": "secret"}, {"secret_type": "number", "empty": False}, "quoted string"),
    ],
)
def test_wrong_values_say_what_is_valid(rule: dict[str, Any], value: Any, want: str) -> None:
    got = check_value(rule, value)
    assert got is not None and want in got, got


def test_unknown_rule_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown rule kind"):
        check_value({"kind": "colour"}, "red")


def test_problems_group_the_hosts_of_one_value() -> None:
    values = {
        "node1": {"multinode_ray_port": 70000, "multinode_vllm_port": 8000},
        "node2": {"multinode_ray_port": 70000, "multinode_vllm_port": "x"},
    }
    rules = {"multinode_ray_port": PORT, "multinode_vllm_port": PORT, "unset_var": PORT}
    problems = invalid_vars(values, rules)
    assert [p["text"] for p in problems] == [
        "multinode_ray_port=70000 on node1, node2 (an integer in 1-65535)",
        "multinode_vllm_port=x on node2 (an integer in 1-65535)",
    ]
    assert {p["check"] for p in problems} == {"port"}


def test_a_secret_is_named_but_never_shown() -> None:
    values = {"node1": {"multinode_api_key": {"secret_type": "number", "empty": False}}}
    (problem,) = invalid_vars(values, {"multinode_api_key": {"kind": "secret"}})
    assert problem["text"].startswith("multinode_api_key is a number on node1")
    assert problem["value"] is None


CLASH_RULES = {
    "multinode_vllm_port": {"kind": "port", "clash_when": {}},
    "multinode_ray_port": {"kind": "port", "clash_when": {"multinode_backend": "ray"}},
    "multinode_master_port": {"kind": "port", "clash_when": {"multinode_backend": "mp"}},
    "ray_head_dashboard_port": {
        "kind": "port",
        "clash_when": {"multinode_backend": "ray", "ray_head_include_dashboard": True},
    },
}


def ports(**kw: Any) -> dict[str, dict[str, Any]]:
    base = {
        "multinode_backend": "ray",
        "ray_head_include_dashboard": True,
        "multinode_vllm_port": 8000,
        "multinode_ray_port": 6379,
        "multinode_master_port": 29501,
        "ray_head_dashboard_port": 8265,
    }
    return {"node1": {**base, **kw}}


@pytest.mark.parametrize(
    ("kw", "clash"),
    [
        ({}, None),
        ({"multinode_vllm_port": 6379}, "node1: multinode_vllm_port=6379, multinode_ray_port=6379"),
        ({"ray_head_dashboard_port": 8000}, "node1: multinode_vllm_port=8000, ray_head_dashboard_port=8000"),
        # the dashboard off, or the mp backend: its port is not in use
        ({"ray_head_dashboard_port": 8000, "ray_head_include_dashboard": "false"}, None),
        ({"multinode_backend": "mp", "ray_head_dashboard_port": 8000, "multinode_ray_port": 8000}, None),
        ({"multinode_backend": "mp", "multinode_master_port": "8000"}, "multinode_master_port=8000"),
        # the ray backend does not use the mp rendezvous port
        ({"multinode_master_port": 8000}, None),
    ],
)
def test_port_clashes_count_only_the_ports_in_use(kw: dict[str, Any], clash: str | None) -> None:
    got = port_clashes(ports(**kw), CLASH_RULES)
    if clash is None:
        assert got == []
    else:
        assert len(got) == 1 and clash in got[0], got


def test_cluster_settings_must_be_one_value_on_every_host() -> None:
    rules = {
        "multinode_vllm_port": {"kind": "port", "cluster": True},
        "multinode_backend": {"kind": "choice", "choices": ["ray", "mp"], "cluster": True},
        "vllm_serve_enforce_eager": {"kind": "bool", "cluster": True},
        "ansible_port": {"kind": "port"},  # per host: may differ
    }
    same = {
        "node1": {
            "multinode_vllm_port": 8000,
            "multinode_backend": "ray",
            "vllm_serve_enforce_eager": True,
            "ansible_port": 22,
        },
        "node2": {
            "multinode_vllm_port": "8000",
            "multinode_backend": "ray",
            "vllm_serve_enforce_eager": "yes",
            "ansible_port": 2222,
        },
    }
    assert cluster_mismatches(same, rules) == []  # 8000 and "8000", true and "yes" agree
    differ = {
        "node1": {"multinode_vllm_port": 8000, "multinode_backend": "ray"},
        "node2": {"multinode_vllm_port": 8001, "multinode_backend": "ray"},
        "node3": {"multinode_vllm_port": 8000, "multinode_backend": "mp"},
    }
    assert cluster_mismatches(differ, rules) == [
        {"var": "multinode_vllm_port", "text": "multinode_vllm_port: 8000 on node1, node3; 8001 on node2"},
        {"var": "multinode_backend", "text": "multinode_backend: ray on node1, node2; mp on node3"},
    ]


def test_extra_args_one_item_per_flag_no_managed_flag_and_secrets_masked() -> None:
    rule = {"kind": "args", "managed": {"--tensor-parallel-size": "vllm_serve_tensor_parallel_size"}}
    assert check_value(rule, ["--enable-chunked-prefill", "--max-num-seqs", "64", "--x=1"]) is None
    assert "is two" in str(check_value(rule, ["--max-num-seqs 64"]))
    assert "set vllm_serve_tensor_parallel_size instead" in str(check_value(rule, ["--tensor-parallel-size=4"]))
    (problem,) = invalid_vars(
        {"node1": {"a": ["--api-key", "sk-1", "--hf-token=hf-2", "--tensor-parallel-size", "2"]}}, {"a": rule}
    )
    assert "sk-1" not in problem["text"] and "hf-2" not in problem["text"], problem["text"]
    (problem,) = invalid_vars({"node1": {"e": {"BAD-NAME": "tok-3"}}}, {"e": {"kind": "env"}})
    assert "tok-3" not in problem["text"] and "BAD-NAME" in problem["text"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("meta-llama/Llama-3.1-405B-Instruct", True),
        ("gpt2", True),
        ("/var/tmp/multinode-vllm/shared/models/tiny-llama", True),
        ("https://huggingface.co/meta-llama/Llama-3.1-8B", False),
        ("~/models/llama", False),
        ("/srv/models/../../etc", False),
        ("meta-llama/Llama 3", False),
        ("/srv/models/llama/", True),
        ("/", False),
        ("", False),
    ],
)
def test_model_is_a_hub_id_or_an_absolute_path(value: str, ok: bool) -> None:
    assert (check_value({"kind": "model"}, value) is None) is ok


def test_messages_never_name_internal_classes() -> None:
    from collections import UserDict, UserList

    class _AnsibleLazyTemplateDict(UserDict):  # stands for Ansible's own container classes
        pass

    class _AnsibleTaggedList(UserList):
        pass

    (problem,) = invalid_vars(
        {"node1": {"multinode_vllm_port": _AnsibleLazyTemplateDict({"a": 1})}}, {"multinode_vllm_port": PORT}
    )
    assert "_Ansible" not in problem["text"] and '{"a": 1}' in problem["text"], problem["text"]
    (problem,) = invalid_vars(
        {"node1": {"multinode_api_key": {"secret_type": "list", "empty": False}}},
        {"multinode_api_key": {"kind": "secret"}},
    )
    assert "_Ansible" not in problem["text"]
    (problem,) = invalid_vars({"node1": {"x": _AnsibleTaggedList([1, 2])}}, {"x": {"kind": "strings"}})
    assert "_Ansible" not in problem["text"] and "[1, 2]" in problem["text"], problem["text"]


def test_a_secret_must_be_one_value_too_and_is_never_shown() -> None:
    """Secrets are compared by a salted digest of the run (host_values), and named without a value."""
    from ansible_collections.multinode.vllm.plugins.module_utils._checks import host_values

    rules = {"multinode_ray_auth_token": {"kind": "secret", "cluster": True}}
    hosts = {"node1": {"multinode_ray_auth_token": "tok-A"}, "node2": {"multinode_ray_auth_token": "tok-A"}}
    values = host_values(hosts, rules, {"multinode_ray_auth_token": ""})
    assert (
        values["node1"]["multinode_ray_auth_token"]["digest"] == values["node2"]["multinode_ray_auth_token"]["digest"]
    )
    assert "tok-A" not in repr(values)
    assert cluster_mismatches(values, rules) == []
    hosts["node3"] = {"multinode_ray_auth_token": "tok-B"}
    hosts["node4"] = {}  # the default: empty (a generated token)
    (problem,) = cluster_mismatches(host_values(hosts, rules, {"multinode_ray_auth_token": ""}), rules)
    assert problem == {
        "var": "multinode_ray_auth_token",
        "text": "multinode_ray_auth_token: one value on node1, node2; another on node3; an empty value on node4"
        " (a secret: the values are not shown)",
    }
    # a new run, a new salt: yesterday's digest says nothing about today's
    again = host_values(hosts, rules, {"multinode_ray_auth_token": ""})
    assert again["node1"]["multinode_ray_auth_token"]["digest"] != values["node1"]["multinode_ray_auth_token"]["digest"]
