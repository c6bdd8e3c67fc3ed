"""Cluster firewall and Ray token auth: the pure helpers, the filters through Ansible, and what the
roles render (the nftables ruleset, checked by the real `nft -c`; the unit; the Ray client argv and
env files) with the roles' own defaults and vars files and fake preflight facts."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.multinode.vllm.plugins.module_utils._checks import _bad_ports
from ansible_collections.multinode.vllm.plugins.module_utils._firewall import (
    FirewallError,
    dynamic_ports,
    member_addresses,
    port_ranges,
    port_span,
    split_addresses,
)
from ansible_run import FAKE_FACTS_MODULE, ansible_playbook, role_vars_files

from multinode_vllm import PROJECT_DIR

ROOT = Path(PROJECT_DIR)
HEAD, WORKER = "10.0.1.11", "10.0.1.12"
RAIL = {"node1": "10.0.2.11", "node2": "10.0.2.12"}


def fabric(ip: str, rail: str) -> dict[str, Any]:
    return {
        "control_interface": "bond0",
        "control_ip": ip,
        "nccl_socket_ifname": "bond0,eth2",
        "gloo_socket_ifname": "bond0",
        "data_interfaces": ["bond0", "eth2"],
        "interfaces": {
            "bond0": {"ipv4": [{"address": ip, "prefixlen": 24}]},
            "eth2": {"ipv4": [{"address": rail, "prefixlen": 24}]},
            # a public interface that is neither control nor data: not a member address
            "eth0": {"ipv4": [{"address": "203.0.113.7", "prefixlen": 24}]},
        },
    }


# --- pure helpers -----------------------------------------------------------------------------


def test_members_are_control_and_data_addresses_plus_extra() -> None:
    got = member_addresses(
        {"node1": fabric(HEAD, RAIL["node1"]), "node2": fabric(WORKER, RAIL["node2"])},
        ["192.0.2.0/24", "2001:db8::1"],
    )
    assert got == {
        "ipv4": [HEAD, WORKER, RAIL["node1"], RAIL["node2"], "192.0.2.0/24"],
        "ipv6": ["2001:db8::1"],
    }
    assert "203.0.113.7" not in got["ipv4"]


def test_members_without_facts_name_the_hosts_and_the_fix() -> None:
    with pytest.raises(FirewallError, match=r"no fabric facts for node2, node3: .*preflight.*--limit"):
        member_addresses({"node1": fabric(HEAD, RAIL["node1"]), "node2": {}, "node3": None})


def test_addresses_are_split_normalised_and_bad_entries_name_the_variable() -> None:
    got = split_addresses(["10.0.0.7/8", "0.0.0.0/0", "::/0", "10.0.0.0/8", "fd00::5"], "cluster_firewall_api_clients")
    assert got == {"ipv4": ["0.0.0.0/0", "10.0.0.0/8"], "ipv6": ["::/0", "fd00::5"]}
    with pytest.raises(FirewallError, match=r"cluster_firewall_api_clients: 'office' is not an IP address or CIDR"):
        split_addresses(["10.0.0.0/8", "office"], "cluster_firewall_api_clients")
    with pytest.raises(FirewallError, match=r"cluster_firewall_extra_members must be a list"):
        split_addresses("10.0.0.1", "cluster_firewall_extra_members")


def test_ports_merge_overlaps_and_reject_bad_entries() -> None:
    assert port_ranges([6379, "10002-19999", "10001", 29501, "32768-65535", "40000", 6379], "p") == [
        "6379",
        "10001-19999",
        "29501",
        "32768-65535",
    ]
    assert port_ranges(8000, "multinode_vllm_port") == ["8000"]
    for bad, why in ((0, "not a port"), ("70000", "not a port"), ("20-10", "from high to low"), ("ssh", "not a port")):
        with pytest.raises(FirewallError, match=rf"cluster_firewall_open_ports: .*{why}"):
            port_ranges([22, bad], "cluster_firewall_open_ports")


@pytest.mark.parametrize(
    ("entry", "span"),
    [
        (80, (80, 80)),
        ("80", (80, 80)),
        (" 6379 ", (6379, 6379)),
        ("10002-19999", (10002, 19999)),
        ("1-65535", (1, 65535)),
    ],
)
def test_port_span_reads_a_port_or_a_range(entry: Any, span: tuple[int, int]) -> None:
    assert port_span(entry) == span


# Validate's shape check and the firewall's ruleset read ports with the same rule (port_span): an
# entry one of them accepts, the other never refuses.
@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (0, "is not a port or a low-high range"),
        ("65536", "is not a port or a low-high range"),
        ("+80", "is not a port or a low-high range"),
        ("8_0", "is not a port or a low-high range"),
        ("\u0663", "is not a port or a low-high range"),  # a non-ASCII digit
        ("1-2-3", "is not a port or a low-high range"),
        ("80-", "is not a port or a low-high range"),
        (True, "is not a port"),
        ("20-10", "runs from high to low"),
    ],
)
def test_one_port_rule_for_validate_and_the_firewall(entry: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        port_span(entry)
    assert why in (_bad_ports([22, entry]) or "")
    with pytest.raises(FirewallError, match=f"cluster_firewall_open_ports: .*{why}"):
        port_ranges([22, entry], "cluster_firewall_open_ports")


def test_dynamic_ports_run_from_the_ephemeral_start_to_65535() -> None:
    assert dynamic_ports("32768\t60999\n") == "32768-65535"
    assert dynamic_ports("1024 65000") == "1024-65535"
    with pytest.raises(FirewallError, match="cluster_firewall_dynamic_ports"):
        dynamic_ports("")


# --- through Ansible: the filters and what the roles render -----------------------------------

# The plan comes from the role's own tasks/plan.yml and vars files.
PLAYBOOK = """\
- name: Render
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Set the preflight facts
      fake_facts:
        facts: "{{{{ node_facts }}}}"
    - name: Check the addresses and ports, work out who may reach which port
      ansible.builtin.include_tasks: {root}/roles/cluster_firewall/tasks/plan.yml
    - name: Render the templates
      ansible.builtin.template:
        src: "{root}/roles/{{{{ item.role }}}}/templates/{{{{ item.src }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item.src | regex_replace('.j2$', '') }}}}"
        mode: "0600"
      loop:
        - {{role: cluster_firewall, src: firewall.nft.j2}}
        - {{role: cluster_firewall, src: multinode-vllm-firewall.service.j2}}
        - {{role: ray_head, src: ray.env.j2}}
        - {{role: ray_head, src: ray-head.service.j2}}
        - {{role: ray_worker, src: ray.env.j2}}
        - {{role: vllm_serve, src: vllm.env.j2}}
        - {{role: vllm_serve, src: vllm.service.j2}}
    - name: Write the derived values
      ansible.builtin.copy:
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
        content: "{{{{ derived | to_json }}}}"
      vars:
        derived:
          plan: "{{{{ cluster_firewall_plan }}}}"
          ray_python: "{{{{ _multinode_ray_python }}}}"
          ray_cli: "{{{{ _multinode_ray_cli }}}}"
          head_args: "{{{{ _ray_head_args }}}}"
          worker_args: "{{{{ _ray_worker_args }}}}"
          vllm_args: "{{{{ _vllm_serve_args }}}}"
          ray_env: "{{{{ _ray_head_env }}}}"
          vllm_env: "{{{{ _vllm_serve_env }}}}"
          vllm_volumes: "{{{{ _vllm_serve_docker_volumes }}}}"
          token_volumes: "{{{{ _multinode_docker_ray_auth_volumes }}}}"
          token: "{{{{ _multinode_ray_auth_token }}}}"
"""


def run_render(tmp_path: Path, **extra: Any) -> subprocess.CompletedProcess[str]:
    lib = tmp_path / "library"
    lib.mkdir(exist_ok=True)
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    port_range = base64.b64encode(b"32768\t60999\n").decode()
    inv = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "cluster_firewall_local_port_range": {"content": port_range},
            },
            "children": {
                "vllm_cluster": {
                    "children": {
                        "ray_head": {
                            "hosts": {"node1": {"node_facts": {"multinode_fabric": fabric(HEAD, RAIL["node1"])}}}
                        },
                        "ray_workers": {
                            "hosts": {"node2": {"node_facts": {"multinode_fabric": fabric(WORKER, RAIL["node2"])}}}
                        },
                    }
                }
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(
        PLAYBOOK.format(
            root=ROOT,
            out=out,
            vars_files=role_vars_files("multinode", "cluster_firewall", "ray_head", "ray_worker", "vllm_serve"),
        )
    )
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    return ansible_playbook(
        *("-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml")),
        *("-e", f"@{tmp_path / 'extra.json'}"),
        timeout=120,
        ANSIBLE_LIBRARY=str(lib),
    )


def render(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    proc = run_render(tmp_path, **extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    result: dict[str, Any] = {}
    for host in ("node1", "node2"):
        result[host] = json.loads((out / f"{host}.json").read_text())
        for f in out.glob(f"{host}-*"):
            result[host][f.name.removeprefix(f"{host}-")] = f.read_text()
    return result


def test_ruleset_protects_ray_nccl_vllm_ports_for_members_and_nft_accepts_it(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        multinode_runtime="native",
        multinode_venv="/opt/v",
        multinode_credentials_dir=str(tmp_path / "creds"),
        cluster_firewall_extra_members=["192.0.2.5"],
        cluster_firewall_api_clients=["198.51.100.0/24"],
        cluster_firewall_open_ports=["9400"],
        multinode_metrics_clients=["203.0.113.7"],
    )
    plan = r["node1"]["plan"]
    assert plan == r["node2"]["plan"]  # the same ruleset on every node
    assert plan["members"] == {"ipv4": [HEAD, WORKER, RAIL["node1"], RAIL["node2"], "192.0.2.5"], "ipv6": []}
    # GCS, Ray metrics, Prometheus, node_exporter, Ray client + worker ports (merged), dashboard agent, mp master
    # port, data-parallel RPC port, ephemeral..65535
    assert plan["protected"] == ["6379", "8090", "9090", "9100", "10001-19999", "29501", "29550", "32768-65535"]
    assert plan["loopback"] == ["8265"] and plan["open"] == ["22", "9400"] and plan["api_port"] == "8000"
    assert plan["api_clients"] == {"ipv4": ["198.51.100.0/24"], "ipv6": []}
    # an outside Prometheus reaches the metrics ports only
    assert plan["metrics_clients"] == {"ipv4": ["203.0.113.7"], "ipv6": []}
    assert plan["metrics_ports"] == ["8090", "9100"]
    assert "--metrics-export-port=8090" in r["node1"]["head_args"]
    assert "--metrics-export-port=8090" in r["node2"]["worker_args"]
    rules = r["node1"]["firewall.nft"]
    assert "table inet multinode_vllm {" in rules and "flush ruleset" not in rules
    assert f"elements = {{ {HEAD}, {WORKER}, {RAIL['node1']}, {RAIL['node2']}, 192.0.2.5 }}" in rules
    chain = rules[rules.index("chain input") :].splitlines()
    order = [
        'iif "lo" accept',
        "ct state established,related accept",
        "meta l4proto { tcp, udp } th dport @loopback_ports drop",
        "ip saddr @members_v4 accept",
        "meta l4proto { tcp, udp } th dport @open_ports accept",
        "tcp dport @metrics_ports ip saddr @metrics_clients_v4 accept",
        "tcp dport 8000 ip saddr @api_clients_v4 accept",
        "tcp dport 8000 drop",
        "meta l4proto { tcp, udp } th dport @protected_ports drop",
    ]
    positions = [next(i for i, line in enumerate(chain) if line.strip() == rule) for rule in order]
    assert positions == sorted(positions), chain
    assert "policy accept;" in rules  # never drops what it does not protect
    # the real nft parses it (check only: nothing is loaded)
    nft = shutil.which("nft") or "/usr/sbin/nft"
    assert Path(nft).exists(), "nft is missing on this machine: apt-get install nftables (scripts/bootstrap does)"
    path = tmp_path / "rules.nft"
    path.write_text(rules)
    check = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    unit = r["node1"]["multinode-vllm-firewall.service"]
    assert "ExecStart=/usr/sbin/nft -f /etc/multinode-vllm/firewall.nft" in unit
    assert "ExecStop=-/usr/sbin/nft delete table inet multinode_vllm" in unit
    assert "Before=ray-head.service ray-worker.service vllm.service" in unit


def test_reject_action_and_an_open_api(tmp_path: Path) -> None:
    r = render(tmp_path, multinode_credentials_dir=str(tmp_path / "c"), cluster_firewall_action="reject")
    rules = r["node1"]["firewall.nft"]
    assert "meta l4proto { tcp, udp } th dport @protected_ports reject" in rules
    assert "elements = { 0.0.0.0/0 }" in rules and "elements = { ::/0 }" in rules


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cluster_firewall_api_clients": ["10.0.0.0/8", "office"]}, "cluster_firewall_api_clients: 'office' is not"),
        ({"cluster_firewall_extra_members": ["10.0.0.300"]}, "cluster_firewall_extra_members: '10.0.0.300' is not"),
        ({"cluster_firewall_ray_ports": ["10002-99999"]}, "cluster_firewall_ray_ports: '10002-99999' is not a port"),
        (
            {"cluster_firewall_dynamic_ports": "60000-50000"},
            "cluster_firewall_dynamic_ports: '60000-50000' runs from high to low; write it low-high",
        ),
        # the role itself never opens an internal port as the API port (validate refuses it first)
        (
            {"multinode_vllm_port": 6379},
            "multinode_vllm_port 6379 is a port the cluster uses internally: multinode_ray_port",
        ),
        ({"multinode_vllm_port": 40000}, "internally: cluster_firewall_dynamic_ports (32768-65535)"),
        ({"multinode_vllm_port": 8265}, "internally: cluster_firewall_loopback_ports (8265)"),
        ({"multinode_vllm_port": 9100}, "internally: multinode_node_exporter_port (9100)"),
        ({"multinode_metrics_clients": ["prometheus"]}, "multinode_metrics_clients: 'prometheus' is not"),
    ],
)
def test_bad_firewall_input_stops_naming_the_variable(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    proc = run_render(tmp_path, multinode_credentials_dir=str(tmp_path / "c"), **extra)
    assert proc.returncode != 0
    assert message in " ".join((proc.stdout + proc.stderr).split())


def test_ray_clients_and_processes_get_the_token_path_never_the_token(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    r = render(tmp_path, multinode_runtime="native", multinode_venv="/opt/v", multinode_credentials_dir=str(creds))
    head, worker = r["node1"], r["node2"]
    token = head["token"]
    # generated once on the controller, mode 0600 in a 0700 dir, the same for every host
    assert len(token) == 48 and token.isalnum() and worker["token"] == token
    assert (creds / "ray-auth-token").read_text().strip() == token
    assert stat.S_IMODE((creds / "ray-auth-token").stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    auth = ["env", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH=/etc/multinode-vllm/ray-auth-token"]
    assert head["ray_python"] == [*auth, "/opt/v/bin/python"]
    assert head["ray_cli"] == [*auth, "/opt/v/bin/ray"]
    for env in (head["ray_env"], head["vllm_env"]):
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/etc/multinode-vllm/ray-auth-token"
    assert 'RAY_AUTH_TOKEN_PATH="/etc/multinode-vllm/ray-auth-token"' in head["ray.env"]
    rendered = json.dumps({k: v for k, v in head.items() if k != "token"}) + json.dumps(
        {k: v for k, v in worker.items() if k != "token"}
    )
    assert token not in rendered
    # a second run reuses the generated token
    again = render(tmp_path, multinode_runtime="native", multinode_credentials_dir=str(creds))
    assert again["node1"]["token"] == token


def test_docker_runtime_mounts_the_token_file_and_a_given_token_wins(tmp_path: Path) -> None:
    r = render(
        tmp_path,
        multinode_runtime="docker",
        multinode_ray_auth_token="given-ray-token",
        multinode_credentials_dir=str(tmp_path / "c"),
    )
    head = r["node1"]
    assert head["token"] == "given-ray-token" and not (tmp_path / "c" / "ray-auth-token").exists()
    mount = "/etc/multinode-vllm/ray-auth-token:/etc/multinode-vllm/ray-auth-token:ro"
    assert head["token_volumes"] == [mount] and mount in head["vllm_volumes"]
    assert head["ray_python"] == ["docker", "exec", "ray-head", "python3"]  # the container has the env
    assert head["ray_env"]["RAY_AUTH_TOKEN_PATH"] == "/etc/multinode-vllm/ray-auth-token"
    assert "given-ray-token" not in json.dumps({k: v for k, v in head.items() if k != "token"})


def test_auth_disabled_is_explicit_and_mp_backend_has_no_ray_env(tmp_path: Path) -> None:
    r = render(tmp_path, multinode_runtime="native", multinode_venv="/opt/v", multinode_ray_auth_mode="disabled")
    head = r["node1"]
    assert head["ray_env"]["RAY_AUTH_MODE"] == "disabled" and "RAY_AUTH_TOKEN_PATH" not in head["ray_env"]
    assert head["ray_python"] == ["env", "RAY_AUTH_MODE=disabled", "/opt/v/bin/python"]
    assert head["token_volumes"] == []
    (tmp_path / "mp").mkdir()
    mp = render(tmp_path / "mp", multinode_runtime="native", multinode_backend="mp", multinode_venv="/opt/v")
    assert "RAY_AUTH_MODE" not in mp["node1"]["vllm_env"]
