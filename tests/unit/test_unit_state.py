"""multinode.vllm.unit_state: one read of a node's units or containers says which must restart.

The module's main() runs through ``patch_module_args`` with a fake ``systemctl`` / ``docker`` on
PATH that print what each case gives, and real files whose times are set with os.utime. The rules
(plugins/module_utils/_units.py) replace the Jinja of unit_drift.yml and vllm_serve's starts.yml:
the cases below are theirs.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.filter.units import FilterModule
from ansible_collections.multinode.vllm.plugins.module_utils import _units
from ansible_collections.multinode.vllm.plugins.modules import unit_state

T0 = 1_796_022_000  # the unit started here


def iso(t: int, frac: str = ".123456789") -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + frac + "Z"


def fake_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, units: dict[str, tuple[str, int]], reload: bool = False
) -> Path:
    """units: name -> (ActiveState, started at or 0 for never). docker: `active` is a running
    container, anything else a stopped one, 0 for never is no such container."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    show = {
        f"{u}.service": (
            f"Id={u}.service\nLoadState={'loaded' if t else 'not-found'}\nFragmentPath={tmp_path / u}.unit\n"
            f"ActiveState={state}\nActiveEnterTimestamp={'@' + str(t) if t else ''}\n"
            f"NeedDaemonReload={'yes' if reload else 'no'}\nNRestarts=0"
        )
        for u, (state, t) in units.items()
    }
    for u, (_, t) in units.items():
        if t:
            (tmp_path / f"{u}.unit").write_text("[Service]\n")
    inspect = {
        u: {
            "Name": "/" + u,
            "RestartCount": 1,
            "State": {
                "Running": state == "active",
                "Status": "running" if state == "active" else "exited",
                "StartedAt": iso(t),
            },
        }
        for u, (state, t) in units.items()
        if t
    }
    (bin_dir / "systemctl").write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        f"SHOW = {show!r}\n"
        "assert sys.argv[1:3] == ['show', '--timestamp=unix'], sys.argv\n"
        "names = [a for a in sys.argv[3:] if not a.startswith('--')]\n"
        "print('\\n\\n'.join(SHOW[n] for n in names))\n"
    )
    (bin_dir / "docker").write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"INSPECT = {json.dumps(inspect)!r}\n"
        "found = json.loads(INSPECT)\n"
        "assert sys.argv[1] == 'inspect', sys.argv\n"
        "print(json.dumps([found[n] for n in sys.argv[2:] if n in found]))\n"
        "missing = [n for n in sys.argv[2:] if n not in found]\n"
        "for n in missing:\n"
        "    print('Error: No such object: ' + n, file=sys.stderr)\n"
        "sys.exit(1 if missing else 0)\n"
    )
    for tool in ("systemctl", "docker"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def files(tmp_path: Path, unit: str, mtimes: list[int]) -> list[str]:
    paths = []
    for i, m in enumerate(mtimes):
        f = tmp_path / f"{unit}.{i}"
        f.write_text("x")
        os.utime(f, (m, m))
        paths.append(str(f))
    return paths


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        unit_state.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("state", "started", "mtimes", "expected"),
    [
        # the unit was rewritten after it started and the restart handler never ran
        ("active", T0, [T0 - 600, T0 + 30], True),
        ("active", T0, [T0 + 30, T0 - 600], True),
        # the usual order: files written, then the unit (re)started
        ("active", T0, [T0 - 600, T0 - 1], False),
        # written in the same second as the start: not later
        ("active", T0, [T0, T0], False),
        # not running: starting it reads the new files, nothing to restart
        ("failed", T0, [T0 + 30, T0 + 30], False),
        ("inactive", 0, [T0 + 30, T0 + 30], False),
    ],
)
@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_drift(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    runtime: str,
    state: str,
    started: int,
    mtimes: list[int],
    expected: bool,
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": (state, started)})
    out = run_main(
        {"runtime": runtime, "units": [{"name": "ray-head", "files": files(tmp_path, "ray-head", mtimes)}]}, capsys
    )
    assert out["changed"] is False
    assert abs(out["now"] - time.time()) < 60  # the node's clock, to tell a unit's age
    assert out["units"]["ray-head"]["drifted"] is expected
    assert ("ray-head" in out["restart"]) is expected
    if expected:
        assert "changed after ray-head started" in out["restart"]["ray-head"]
    assert out["started_at"]["ray-head"] == (T0 if state == "active" and started else 0)


def test_each_unit_keeps_its_own_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ray-head and vllm run on the same head, read in one call: one's answer must not leak into the other's."""
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("active", T0 + 60)})
    out = run_main(
        {
            "runtime": "native",
            "units": [
                {"name": "ray-head", "files": files(tmp_path, "ray-head", [T0 + 30])},
                {"name": "vllm", "files": files(tmp_path, "vllm", [T0 + 30])},
            ],
        },
        capsys,
    )
    assert out["restart"].keys() == {"ray-head"}
    assert out["started_at"] == {"ray-head": T0, "vllm": T0 + 60}
    # restarts on their own since the last asked-for start (systemd's NRestarts; Docker's RestartCount)
    assert out["restarts"] == {"ray-head": 0, "vllm": 0}
    docker = run_main({"runtime": "docker", "units": [{"name": "ray-head"}, {"name": "vllm"}]}, capsys)
    assert docker["restarts"] == {"ray-head": 1, "vllm": 1}


def test_missing_units_and_containers_are_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("inactive", 0)})
    for runtime in ("native", "docker"):
        out = run_main({"runtime": runtime, "units": [{"name": "ray-head"}, {"name": "vllm"}]}, capsys)
        assert out["units"]["ray-head"]["present"] is True
        assert out["units"]["vllm"]["present"] is False
        assert out["units"]["vllm"]["active"] is False


def test_deleted_unit_file_is_not_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """systemd keeps a deleted unit loaded until a daemon-reload: the file decides."""
    fake_tools(tmp_path, monkeypatch, {"vllm": ("inactive", T0)})
    (tmp_path / "vllm.unit").unlink()
    out = run_main({"runtime": "native", "units": [{"name": "vllm"}]}, capsys)
    assert out["units"]["vllm"]["present"] is False


def test_need_daemon_reload_is_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"vllm": ("active", T0)}, reload=True)
    out = run_main(
        {"runtime": "native", "units": [{"name": "vllm", "files": files(tmp_path, "vllm", [T0 - 5])}]}, capsys
    )
    assert out["units"]["vllm"]["need_daemon_reload"] is True
    assert "changed on disk since systemd loaded it" in out["restart"]["vllm"]


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("2026-11-30T07:00:00.5Z", 1796022000),
        ("2026-11-30T07:01:00.123456789Z", 1796022060),
        ("2026-11-30T08:01:00+01:00", 1796022060),
        ("0001-01-01T00:00:00Z", 0),
        ("", 0),
        ("garbage", 0),
    ],
)
def test_docker_start_times(value: str, epoch: int) -> None:
    assert _units.iso_to_epoch(value) == epoch


# vLLM does not survive a lost member (was vllm_serve's starts.yml + vars Jinja).
@pytest.mark.parametrize(
    ("started", "stale"),
    [
        # systemd restarted the worker's Ray after vLLM started: the trap
        ({"node1": {"ray-head": T0 - 60, "vllm": T0}, "node2": {"ray-worker": T0 + 30}}, ["node2 ray-worker"]),
        # the usual order: Ray, then vLLM
        ({"node1": {"ray-head": T0 - 60, "vllm": T0}, "node2": {"ray-worker": T0 - 20}}, []),
        # the head's Ray restarted after vLLM (node1 rebooted and Ray came back first)
        ({"node1": {"ray-head": T0 + 5, "vllm": T0}, "node2": {"ray-worker": T0 - 20}}, ["node1 ray-head"]),
        # the worker's Ray is down (0): not stale here (the cluster phase restarts the group in order)
        ({"node1": {"ray-head": T0 - 60, "vllm": T0}, "node2": {"ray-worker": 0}}, []),
        # vLLM not running: nothing to compare with (the health probe restarts it)
        ({"node1": {"ray-head": T0 - 60, "vllm": 0}, "node2": {"ray-worker": T0 + 30}}, []),
        # mp backend: a headless vLLM that restarted on its own (restarts 1) after the head's
        ({"node1": {"vllm": T0}, "node2": {"vllm": T0 + 3}}, ["node2 vllm"]),
        ({"node1": {"vllm": T0}, "node2": {"vllm": T0}}, []),
        # ... one the collection restarted with the head's, 40 s later behind a slow stop (restarts 0)
        ({"node1": {"vllm": T0}, "node3": {"vllm": T0 + 40}}, []),
        # ... one restarted by hand (restarts 0) long after the head's: outside the spread
        ({"node1": {"vllm": T0}, "node3": {"vllm": T0 + 61}}, ["node3 vllm"]),
        # the worker's Ray started in the same second as vLLM: the order is unknown (whole seconds), and
        # a vLLM that started first hangs (a CI run's fault 4: 0.23 s apart, vLLM first): stale
        ({"node1": {"ray-head": T0 - 60, "vllm": T0}, "node2": {"ray-worker": T0}}, ["node2 ray-worker"]),
        # the spread is for the vLLM peers: a Ray worker 3 s after vLLM is stale whatever its count
        ({"node1": {"ray-head": T0 - 60, "vllm": T0}, "node3": {"ray-worker": T0 + 3}}, ["node3 ray-worker"]),
        # a node that did not answer has no start times
        ({"node1": {"vllm": T0}, "node2": {}}, []),
    ],
)
def test_stale_members(started: dict[str, dict[str, int]], stale: list[str]) -> None:
    # node2's units restarted on their own once; node3's were started by the collection
    restarts = {"node1": {"vllm": 0}, "node2": {"vllm": 1, "ray-worker": 1}, "node3": {"vllm": 0, "ray-worker": 0}}
    assert FilterModule().filters()["stale_members"](started, "node1", restarts=restarts, spread=60) == stale


def test_stale_members_without_spread_counts_every_later_start() -> None:
    late = {"node1": {"vllm": T0}, "node3": {"vllm": T0 + 1}}
    assert FilterModule().filters()["stale_members"](late, "node1", restarts={"node3": {"vllm": 0}}) == ["node3 vllm"]


def test_node_status_problems() -> None:
    report = {
        "units": {
            "ray-head": {"state": "active", "drifted": True, "need_daemon_reload": False},
            "ray-worker": {"state": "inactive"},
            "vllm": {"state": "failed"},
        }
    }
    shm = _units.parse_shm("Size Used Avail\n1073741824 1000000000 73741824\n", 536870912)
    st = _units.node_status("node1", "native", report, ["ray-head", "vllm"], shm)
    assert st["processes"] == {"ray-head": "active", "ray-worker": "inactive", "vllm": "failed"}
    assert st["problems"][0] == "node1: vllm is failed"
    assert st["problems"][1].startswith("node1: the ray-head unit changed on disk since it started")
    assert st["problems"][2].startswith("node1: /dev/shm has 70 MiB free of 1024 MiB, Ray and vLLM need 512 MiB")
    assert _units.parse_shm("", 1, "df: no") == {"error": "df: no", "full": False}
    # node_setup's statvfs read gives the same record as df
    usage = {"size": 1073741824, "used": 1000000000, "avail": 73741824}
    assert _units.parse_shm(usage, 536870912) == shm
    assert _units.parse_shm({"error": "/dev/shm: No such file or directory"}, 1) == {
        "error": "/dev/shm: No such file or directory",
        "full": False,
    }


def test_cluster_status() -> None:
    nodes = {"node1": {"reachable": True, "problems": []}}
    st = _units.cluster_status(
        "native",
        "ray",
        ["node1", "node2"],
        nodes,
        {
            "ok": False,
            "msg": "Ray sees 1 of 2 nodes",
            "object_store_bytes": 2147483648,
            "object_store_used_bytes": 1024,
        },
        {"status": 200},
        {"json": {"data": [{"id": "tiny"}]}},
        "http://h:8000/v1",
    )
    assert st["healthy"] is False
    assert st["problems"] == ["node2: unreachable", "Ray: Ray sees 1 of 2 nodes"]
    assert st["nodes"]["node2"] == {"reachable": False}
    assert st["vllm"]["models"] == ["tiny"]
    assert st["ray"]["object_store_bytes"] == 2147483648 and st["ray"]["object_store_used_bytes"] == 1024
    ok = _units.cluster_status("docker", "mp", ["node1"], nodes, {}, {"status": 200}, {}, "e")
    assert ok["healthy"] is True and ok["problems"] == []
    down = _units.cluster_status("docker", "mp", ["node1"], nodes, {}, {}, {}, "e")
    assert down["problems"] == ["vLLM: /health answered -1"]


def test_unit_files() -> None:
    assert _units.unit_files("vllm", "native", "/etc/m/") == ["/etc/systemd/system/vllm.service", "/etc/m/vllm.env"]
    assert _units.unit_files("vllm", "docker", "/etc/m") == ["/etc/m/vllm.env"]


def test_cluster_gpus_counts_nodes_that_do_not_answer() -> None:
    """status on a group with a node down must still expect that node's GPUs (Ray then misses them)."""
    gpus = FilterModule().filters()["cluster_gpus"]
    answered = {
        "multinode_node_gpus": "1",
        "multinode_ray_num_gpus": 1,
        "ansible_facts": {"multinode_gpu": {"count": 8}},
    }
    down_inventory = {"multinode_ray_num_gpus": 1}  # no facts, nothing noted in this run
    down_facts = {"ansible_facts": {"multinode_gpu": {"count": 8}}}
    assert gpus([answered, down_inventory]) == 2
    assert gpus([answered, down_facts]) == 9
    assert gpus([answered, {}]) == 1
    assert gpus([{"multinode_node_gpus": 4, "multinode_ray_num_gpus": 1}]) == 4


# ------------------------------------------------------------------- Ray's token auth environment
def test_ray_auth_env_gives_the_mode_and_the_token_path_never_the_token() -> None:
    env = FilterModule().filters()["ray_auth_env"]
    assert env("ray", True, "/etc/multinode-vllm/ray-auth-token") == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/etc/multinode-vllm/ray-auth-token",
    }
    assert env("ray", False, "/etc/multinode-vllm/ray-auth-token") == {"RAY_AUTH_MODE": "disabled"}
    assert env("mp", True, "/etc/multinode-vllm/ray-auth-token") == {}


def test_the_hosts_path_and_the_slurm_job_take_ray_auth_from_one_rule() -> None:
    root = Path(PROJECT_DIR) / "roles"
    for role, backend in (("multinode", "multinode_backend"), ("slurm", "_slurm_backend")):
        text = (root / role / "vars" / "main.yml").read_text()
        assert f"{backend} | multinode.vllm.ray_auth_env(" in text, role
        assert "'RAY_AUTH_MODE'" not in text, role


RAY_NODES = [
    {"Alive": True, "NodeManagerAddress": "10.0.0.11", "Resources": {"GPU": 1.0}},
    {"Alive": True, "NodeManagerAddress": "10.0.0.12", "Resources": {"GPU": 1.0}},
]


def fake_ray_python(tmp_path: Path, nodes: list[dict[str, Any]]) -> str:
    """A python that answers the Ray query's script with the given nodes (and logs its call)."""
    script = tmp_path / "ray-python"
    script.write_text(
        f"#!/bin/sh\necho called >> {tmp_path}/ray-calls\n"
        f"echo 'MNV_RAY_NODES {json.dumps(nodes)}'\n"
        "echo 'MNV_RAY_AVAILABLE {\"object_store_memory\": 100.0}'\n"
    )
    script.chmod(0o755)
    return str(script)


@contextlib.contextmanager
def loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server with this handler on a free loopback port: its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[str, dict[str, int]]]:
    """vLLM's /health on loopback: 200, or what status['code'] says."""
    status = {"code": 200}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"])
            self.end_headers()

    with loopback(Handler) as base:
        yield f"{base}/health", status


def probe_args(tmp_path: Path, url: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runtime": "native",
        "units": [{"name": "ray-head"}, {"name": "vllm"}],
        "ray": {
            "address": "10.0.0.11:6379",
            "python_cmd": [fake_ray_python(tmp_path, nodes)],
            "expected_nodes": ["10.0.0.11", "10.0.0.12"],
            "expected_gpus": 2,
        },
        "health_url": url,
    }


def test_the_head_probe_reads_units_ray_and_health_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], health_server: Any
) -> None:
    url, status = health_server
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("active", T0)})
    out = run_main(probe_args(tmp_path, url, RAY_NODES), capsys)
    assert out["units"]["ray-head"]["active"] and out["units"]["vllm"]["active"]
    assert out["ray"]["ok"] is True and out["ray"]["msg"] == "Ray sees 2 nodes and 2 GPUs"
    assert out["ray"]["node_ips"] == ["10.0.0.11", "10.0.0.12"] and out["ray"]["reachable"] is True
    assert out["health"]["status"] == 200
    # a worker gone and vLLM unhealthy: the same answers ray_cluster_info and uri gave
    status["code"] = 503
    out = run_main(probe_args(tmp_path, url, RAY_NODES[:1]), capsys)
    assert out["ray"]["ok"] is False and out["ray"]["missing"] == ["10.0.0.12"]
    assert out["ray"]["msg"] == "Ray sees 1 of 2 nodes: 10.0.0.12 missing; Ray sees 1 of 2 GPUs"
    assert out["health"]["status"] == 503


def test_the_head_probe_asks_nothing_of_a_unit_that_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("failed", T0), "vllm": ("inactive", 0)})
    out = run_main(probe_args(tmp_path, "http://127.0.0.1:9/health", RAY_NODES), capsys)
    assert "ray" not in out and "health" not in out
    assert not (tmp_path / "ray-calls").exists()


def test_the_head_probe_reports_no_answer_as_minus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("active", T0)})
    args = probe_args(tmp_path, "http://127.0.0.1:9/health", RAY_NODES)  # the discard port: refused
    args["ray"]["python_cmd"] = ["/bin/false"]
    out = run_main(args, capsys)
    assert out["health"]["status"] == -1
    assert out["ray"]["reachable"] is False and out["ray"]["ok"] is False
    assert out["ray"]["msg"].startswith("cannot query Ray at 10.0.0.11:6379 (rc=1")


def test_the_head_probe_refuses_an_empty_python_before_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("inactive", 0)})
    args = probe_args(tmp_path, "http://127.0.0.1:9/health", RAY_NODES)
    args["ray"]["python_cmd"] = []
    out = run_main(args, capsys)
    assert out["failed"] is True and out["msg"].startswith("python_cmd is empty")


@pytest.fixture
def vllm_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """vLLM's /health, /v1/models (behind a key) and /metrics (a counter that grows per read) on loopback."""
    state: dict[str, Any] = {"health": 200, "metric_reads": 0, "auth": []}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            code, body = 404, b""
            if self.path == "/health":
                code = state["health"]
            elif self.path == "/v1/models":
                state["auth"].append(self.headers.get("Authorization"))
                ok = self.headers.get("Authorization") == "Bearer sk-test"
                code, body = (200, b'{"data": [{"id": "tiny"}]}') if ok else (401, b'{"error": "no key"}')
            elif self.path == "/metrics":
                state["metric_reads"] += 1
                code, body = 200, f"vllm:generation_tokens_total {10 * state['metric_reads']}\n".encode()
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

    with loopback(Handler) as base:
        yield base, state


def status_args(tmp_path: Path, base: str, key: str = "sk-test") -> dict[str, Any]:
    """What playbooks/status.yml asks of the head: everything, whatever runs."""
    args = probe_args(tmp_path, base + "/health", RAY_NODES)
    args["ray"].update(when_active="", status_cmd=["sh", "-c", "echo '======== Autoscaler status'; echo 'Active:'"])
    args.update(
        health_when_active="",
        models_url=base + "/v1/models",
        api_key=key,
        metrics_url=base + "/metrics",
        metrics_window=0.2,
    )
    return args


def test_the_status_probe_reads_ray_its_status_health_models_and_metrics_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], vllm_server: Any
) -> None:
    base, state = vllm_server
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("active", T0)})
    t0 = time.monotonic()
    out = run_main(status_args(tmp_path, base), capsys)
    assert time.monotonic() - t0 >= 0.2  # the metrics window lies between the two reads
    assert out["ray"]["ok"] is True and out["ray_status"] == {
        "rc": 0,
        "stdout_lines": ["======== Autoscaler status", "Active:"],
    }
    assert out["health"]["status"] == 200
    assert out["models"]["status"] == 200 and out["models"]["json"] == {"data": [{"id": "tiny"}]}
    assert state["auth"] == ["Bearer sk-test"]
    first, second = out["metrics"]["first"], out["metrics"]["second"]
    assert (first["status"], second["status"]) == (200, 200)
    assert first["content"] == "vllm:generation_tokens_total 10\n"
    assert second["content"] == "vllm:generation_tokens_total 20\n"
    assert "sk-test" not in json.dumps(out)  # the key is no_log: never in the result
    # what status makes of it: the same summary as from the uri reads it replaces
    st = _units.cluster_status("native", "ray", ["node1"], {}, out["ray"], out["health"], out["models"], "e")
    assert st["vllm"]["models"] == ["tiny"] and st["vllm"]["health"] == 200


def test_the_status_probe_asks_ray_and_vllm_also_when_their_units_are_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], vllm_server: Any
) -> None:
    base, state = vllm_server
    state["health"] = 503
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("failed", T0), "vllm": ("inactive", 0)})
    out = run_main(status_args(tmp_path, base, key=""), capsys)
    assert (tmp_path / "ray-calls").exists() and out["ray"]["ok"] is True  # asked: the answer explains
    assert out["health"]["status"] == 503
    assert "metrics" not in out and state["metric_reads"] == 0  # no metrics from an unhealthy vLLM
    assert out["models"]["status"] == 401 and out["models"]["json"] is None  # no key sent: refused
    assert state["auth"] == [None]


def test_the_status_probe_without_an_answer_is_minus_one_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, {"ray-head": ("active", T0), "vllm": ("active", T0)})
    out = run_main(status_args(tmp_path, "http://127.0.0.1:9"), capsys)  # the discard port: refused
    assert out["health"]["status"] == -1 and out["models"]["status"] == -1 and out["models"]["json"] is None
    assert "metrics" not in out
