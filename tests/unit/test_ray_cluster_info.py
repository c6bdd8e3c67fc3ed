"""ray_cluster_info: parsing ray.nodes(), the verdict, and main() against a fake Ray python.

The fake is at the hardware boundary only: a script standing in for the venv python that prints
what ``ray.nodes()`` printed on the test bed; the module's argv building, polling, timeout and
messages are the real code.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from multinode_vllm.module_utils import _ray

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.modules import ray_cluster_info

HEAD, WORKER = "10.200.1.11", "10.200.1.12"


def node(ip: str, gpus: float = 1.0, alive: bool = True, head: bool = False, nid: str = "") -> dict[str, Any]:
    res: dict[str, Any] = {"CPU": 2.0, "memory": 1.5e10, "object_store_memory": 2147483648.0, f"node:{ip}": 1.0}
    if gpus:
        res["GPU"] = gpus
    if head:
        res["node:__internal_head__"] = 1.0
    return {
        "NodeID": nid or ("a" * 56 if head else "b" * 56),
        "Alive": alive,
        "NodeManagerAddress": ip,
        "NodeManagerHostname": "node1" if head else "node2",
        "Resources": res if alive else {},
        "alive": alive,
    }


def marked(nodes: list[dict[str, Any]]) -> str:
    return (
        "2026-11-24 14:00:00,000 INFO worker.py:1850 -- Connecting to existing Ray cluster\n"
        + _ray.MARKER
        + json.dumps(nodes)
        + "\n"
    )


# --- pure functions -------------------------------------------------------------------------


def test_parse_takes_the_marked_line_among_ray_logs() -> None:
    nodes = _ray.parse_nodes_output(marked([node(HEAD, head=True), node(WORKER)]))
    assert [n["NodeManagerAddress"] for n in nodes] == [HEAD, WORKER]


def test_parse_without_marker_raises() -> None:
    with pytest.raises(_ray.RayQueryError, match="no node list"):
        _ray.parse_nodes_output("ConnectionError: GCS has not started yet\n")


def test_summary_counts_only_alive_entries_and_sums_gpus() -> None:
    # a restarted worker leaves its dead entry next to the new one
    nodes = [node(WORKER, alive=False, nid="c" * 56), node(WORKER, gpus=8), node(HEAD, gpus=8, head=True)]
    s = _ray.summarize(nodes)
    assert s["alive_count"] == 2
    assert s["dead_count"] == 1
    assert s["gpus"] == 16
    assert s["alive_nodes"][0]["ip"] == HEAD and s["alive_nodes"][0]["is_head"] is True
    assert s["node_ips"] == [HEAD, WORKER]


def test_object_store_capacity_of_alive_nodes_and_the_part_in_use() -> None:
    nodes = [node(WORKER, alive=False, nid="c" * 56), node(WORKER), node(HEAD, head=True)]
    out = marked(nodes) + _ray.AVAILABLE_MARKER + json.dumps({"object_store_memory": 3221225472.0, "GPU": 2.0}) + "\n"
    s = _ray.summarize(_ray.parse_nodes_output(out), _ray.parse_available_output(out))
    assert [n["object_store_bytes"] for n in s["alive_nodes"]] == [2147483648, 2147483648]
    assert s["object_store_bytes"] == 4294967296  # the dead entry does not count
    assert s["object_store_used_bytes"] == 1073741824
    # an older query script (no available line) or a bad line: capacity known, use unknown
    assert _ray.parse_available_output(marked(nodes)) == {}
    assert _ray.parse_available_output(_ray.AVAILABLE_MARKER + "{not json\n") == {}
    assert _ray.summarize(nodes)["object_store_used_bytes"] is None
    assert _ray.summarize([])["object_store_bytes"] == 0


def test_compare_names_the_missing_node() -> None:
    s = _ray.summarize([node(HEAD, head=True)])
    v = _ray.compare(s, [HEAD, WORKER], expected_gpus=2)
    assert v["ok"] is False
    assert v["missing"] == [WORKER]
    assert v["msg"] == f"Ray sees 1 of 2 nodes: {WORKER} missing; Ray sees 1 of 2 GPUs"


def test_compare_ok_and_unexpected() -> None:
    s = _ray.summarize([node(HEAD, head=True), node(WORKER), node("10.200.1.13")])
    v = _ray.compare(s, [HEAD, WORKER], expected_gpus=3)
    assert v["ok"] is True
    assert v["unexpected"] == ["10.200.1.13"]
    assert v["msg"] == "Ray sees 3 nodes and 3 GPUs"


def test_compare_gpu_shortfall_alone_fails() -> None:
    s = _ray.summarize([node(HEAD, gpus=8, head=True), node(WORKER, gpus=7)])
    v = _ray.compare(s, [HEAD, WORKER], expected_gpus=16)
    assert not v["ok"]
    assert v["missing"] == []
    assert v["msg"] == "Ray sees 15 of 16 GPUs"


def test_query_argv_is_bounded_and_passes_the_address() -> None:
    argv = _ray.build_query_argv(["/opt/venv/bin/python"], f"{HEAD}:6379", 30)
    assert argv[:3] == ["timeout", "--kill-after=5", "30"]
    assert argv[3:5] == ["/opt/venv/bin/python", "-c"]
    assert argv[-1] == f"{HEAD}:6379"
    compile(argv[5], "<nodes-script>", "exec")  # the script itself is valid python
    with pytest.raises(ValueError, match="python_cmd is empty"):
        _ray.build_query_argv([], "x:1", 0)


# --- main() against a fake Ray python --------------------------------------------------------


def fake_python(tmp_path: Path, outputs: list[str], rc: int = 0) -> Path:
    """A stand-in for the venv python: the Nth call prints outputs[min(N, last)]."""
    for i, out in enumerate(outputs):
        (tmp_path / f"out{i}").write_text(out)
    script = tmp_path / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'd="{tmp_path}"\n'
        'n=$(cat "$d/count" 2>/dev/null || echo 0); echo $((n+1)) > "$d/count"\n'
        f'last={len(outputs) - 1}; [ "$n" -gt "$last" ] && n=$last\n'
        '[ "$2" = "" ] && exit 9\n'  # the script must be passed after -c
        'echo "$3" > "$d/address"\n'
        'cat "$d/out$n"\n'
        f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        ray_cluster_info.main()
    return json.loads(capsys.readouterr().out)


def test_main_reports_both_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = fake_python(tmp_path, [marked([node(HEAD, head=True), node(WORKER)])])
    out = run_main(
        {
            "address": f"{HEAD}:6379",
            "python_cmd": [str(py)],
            "expected_nodes": [HEAD, WORKER],
            "expected_gpus": 2,
        },
        capsys,
    )
    assert not out.get("failed")
    assert out["ok"] is True and out["changed"] is False
    assert out["node_ips"] == [HEAD, WORKER]
    assert out["gpus"] == 2
    assert out["object_store_bytes"] == 2 * 2147483648 and out["object_store_used_bytes"] is None
    assert out["polls"] == 1
    assert (tmp_path / "address").read_text().strip() == f"{HEAD}:6379"


def test_main_waits_until_the_worker_joins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = marked([node(HEAD, head=True)])
    py = fake_python(tmp_path, [one, one, marked([node(HEAD, head=True), node(WORKER)])])
    out = run_main(
        {
            "address": f"{HEAD}:6379",
            "python_cmd": [str(py)],
            "expected_nodes": [HEAD, WORKER],
            "wait_timeout": 300,
            "poll_interval": 1,
        },
        capsys,
    )
    assert out["ok"] is True
    assert out["polls"] == 3


def test_main_fails_after_the_wait_naming_the_missing_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = fake_python(tmp_path, [marked([node(HEAD, head=True)])])
    out = run_main(
        {
            "address": f"{HEAD}:6379",
            "python_cmd": [str(py)],
            "expected_nodes": [HEAD, WORKER],
            "wait_timeout": 2,
            "poll_interval": 1,
        },
        capsys,
    )
    assert out["failed"] is True
    assert out["msg"] == f"Ray sees 1 of 2 nodes: {WORKER} missing after 2s"
    assert out["missing"] == [WORKER]
    assert 1 <= out["polls"] <= 3  # one a second at most (one poll can take the 2 s on a loaded machine)


def test_main_probe_does_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = fake_python(tmp_path, [marked([node(HEAD, head=True)])])
    out = run_main(
        {
            "address": f"{HEAD}:6379",
            "python_cmd": [str(py)],
            "expected_nodes": [HEAD, WORKER],
            "fail_on_missing": False,
        },
        capsys,
    )
    assert not out.get("failed")
    assert out["ok"] is False and out["missing"] == [WORKER]


def test_main_unreachable_gcs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    py = fake_python(tmp_path, ["ConnectionError: Could not find any running Ray instance.\n"], rc=1)
    out = run_main({"address": f"{HEAD}:6379", "python_cmd": [str(py)], "expected_nodes": [HEAD]}, capsys)
    assert out["failed"] is True
    assert out["reachable"] is False
    assert out["msg"].startswith(f"cannot query Ray at {HEAD}:6379 (rc=1")
    assert "Could not find any running Ray instance" in out["msg"]


# --- the watching query: the real script, a stand-in `ray` package ------------------------------


def fake_ray_package(tmp_path: Path, answers: list[list[dict[str, Any]]]) -> Path:
    """A `ray` module whose nodes() gives answers[N] on its Nth call (the last one from then on);
    each call is logged, so that the test sees how often one process asked."""
    pkg = tmp_path / "site" / "ray"
    pkg.mkdir(parents=True)
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    (pkg / "__init__.py").write_text(
        "import json, pathlib\n"
        f"_d = pathlib.Path({str(tmp_path)!r})\n"
        "def init(address, **kw):\n"
        "    (_d / 'inits').open('a').write(address + '\\n')\n"
        "def nodes():\n"
        "    log = _d / 'calls'\n"
        "    n = len(log.read_text().splitlines()) if log.exists() else 0\n"
        "    log.open('a').write('x\\n')\n"
        "    answers = json.loads((_d / 'answers.json').read_text())\n"
        "    return answers[min(n, len(answers) - 1)]\n"
        "def available_resources():\n"
        "    return {'object_store_memory': 1.0}\n"
        "def shutdown():\n"
        "    pass\n"
    )
    return pkg.parent


def run_script(tmp_path: Path, site: Path, argv: list[str]) -> tuple[int, str, str]:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_watching_query_asks_again_in_one_process_until_the_worker_joins(tmp_path: Path) -> None:
    one, both = [node(HEAD, head=True)], [node(HEAD, head=True), node(WORKER)]
    site = fake_ray_package(tmp_path, [one, one, one, both])
    argv = _ray.build_query_argv([sys.executable], f"{HEAD}:6379", 30, ([HEAD, WORKER], 2.0, 20))
    assert argv[:3] == ["timeout", "--kill-after=5", "50"]  # the wait is added to the query's bound
    summary, error = _ray.query_once(lambda a: run_script(tmp_path, site, a), argv)
    assert error == "" and summary is not None and summary["node_ips"] == [HEAD, WORKER]
    assert len((tmp_path / "inits").read_text().splitlines()) == 1  # connected once
    assert len((tmp_path / "calls").read_text().splitlines()) == 4  # asked until both were there


def test_a_watching_query_stops_at_its_wait_with_the_last_answer(tmp_path: Path) -> None:
    site = fake_ray_package(tmp_path, [[node(HEAD, head=True)]])
    argv = _ray.build_query_argv([sys.executable], f"{HEAD}:6379", 0, ([HEAD, WORKER], None, 1.2))
    summary, _error = _ray.query_once(lambda a: run_script(tmp_path, site, a), argv)
    assert summary is not None and summary["node_ips"] == [HEAD]
    assert 2 <= len((tmp_path / "calls").read_text().splitlines()) <= 4  # every 0.5 s for about 1.2 s
    # a GPU shortfall keeps it asking too: the node is there but its GPU is not
    (tmp_path / "calls").unlink()
    site = fake_ray_package(tmp_path / "gpu", [[node(HEAD, head=True, gpus=0)], [node(HEAD, head=True)]])
    argv = _ray.build_query_argv([sys.executable], f"{HEAD}:6379", 0, ([HEAD], 1.0, 10))
    summary, _error = _ray.query_once(lambda a: run_script(tmp_path / "gpu", site, a), argv)
    assert summary is not None and summary["gpus"] == 1
    assert len((tmp_path / "gpu" / "calls").read_text().splitlines()) == 2


def test_a_plain_query_asks_once(tmp_path: Path) -> None:
    site = fake_ray_package(tmp_path, [[node(HEAD, head=True)], [node(HEAD, head=True), node(WORKER)]])
    summary, _error = _ray.query_once(
        lambda a: run_script(tmp_path, site, a), _ray.build_query_argv([sys.executable], f"{HEAD}:6379", 30)
    )
    assert summary is not None and summary["node_ips"] == [HEAD]
    assert len((tmp_path / "calls").read_text().splitlines()) == 1
