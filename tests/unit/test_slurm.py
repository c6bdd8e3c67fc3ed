"""The SLURM path's rules (plugins/module_utils/_slurm.py), its filters and the slurm_job_wait module.

SLURM's own output (sinfo, squeue, scontrol, slurmd -C) is given as text captured from SLURM 22.05;
the module runs with fake `scontrol` on PATH (the cluster boundary) and a real HTTP server on
loopback standing in for vLLM.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_run import ansible_playbook

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.filter.slurm import FilterModule
from ansible_collections.multinode.vllm.plugins.module_utils import _slurm
from ansible_collections.multinode.vllm.plugins.modules import slurm_job_wait

ROOT = Path(PROJECT_DIR)
DEFAULTS = yaml.safe_load((ROOT / "roles/slurm/defaults/main.yml").read_text())
FILTERS = FilterModule().filters()

SINFO = """node[01-02] is not a line we read
gpu01|idle|gpu:h100:8(S:0-1)|224|2000000
gpu02|mixed|gpu:h100:8(S:0-1)|224|2000000
gpu03|drained*|gpu:h100:8(S:0-1)|224|2000000
gpu04|idle|gpu:4|224|2000000
"""
PARTITION = (
    "PartitionName=gpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=2-00:00:00 "
    "Nodes=gpu[01-04] State=UP TotalCPUs=896 TotalNodes=4"
)
SLURMD_C = """NodeName=node2 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=22899
UpTime=0-00:12:31
"""
JOB_RUNNING = (
    "JobId=7 JobName=multinode-vllm UserId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
    "RunTime=00:02:17 TimeLimit=02:00:00 EndTime=2026-12-06T11:51:05 NodeList=node[2-3] BatchHost=node2 "
    "Comment=multinode-vllm:abc StdOut=/srv/x/multinode-vllm-7.out"
)


# --- options and layout --------------------------------------------------------------------------


def test_the_role_defaults_pass_the_option_checks() -> None:
    assert _slurm.option_problems(DEFAULTS) == []


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("slurm_partition", "gpu nodes", "no spaces"),
        ("slurm_nodes", 0, "at least 1"),
        ("slurm_gpus_per_node", "eight", "whole number"),
        ("slurm_time_limit", "2h", "HH:MM:SS"),
        ("slurm_workdir", "jobs/vllm", "absolute path"),
        ("slurm_nodelist", "node1 node2", "host list"),
        ("slurm_extra_directives", ["mem=0"], "starting with --"),
        ("slurm_qos", "high prio", "letters"),
        ("slurm_submit_timeout", True, "whole number"),
        ("slurm_ray_timeout", "5m", "whole number"),
        ("slurm_poll_interval", 0, "at least 1"),
        ("slurm_output_lines", -3, "at least 1"),
        ("slurm_teardown_timeout", 1.5, "whole number"),
        ("slurm_exclusive", "maybe", "true or false"),
        ("slurm_memory_fraction", 1.5, "at most 1"),
        ("slurm_memory_fraction", "nan", "above 0"),
        ("vllm_serve_data_parallel_size", "two", "whole number"),
    ],
)
def test_a_bad_option_is_named_with_its_value_and_the_fix(var: str, value: Any, words: str) -> None:
    problems = _slurm.option_problems({**DEFAULTS, var: value})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{var}={value!r}") and words in problems[0]


@pytest.mark.parametrize("limit", ["30", "1:00:00", "2-00:00:00", "1-12", "UNLIMITED", 90])
def test_time_limits_sbatch_takes(limit: Any) -> None:
    assert _slurm.option_problems({"slurm_time_limit": limit}) == []


def test_layout_defaults_to_tp_per_node_and_pp_per_node() -> None:
    # the seed's 405B job: 2 nodes x 8 GPUs -> TP 8 x PP 2
    assert FILTERS["slurm_parallel"](2, 8) == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "data_parallel_size": 1,
        "data_parallel_size_local": 1,
        "gpus": 16,
        "problem": "",
    }
    assert _slurm.parallel_layout(2, 1, 1, 2)["problem"] == ""


def test_a_layout_that_does_not_match_the_gpus_says_so_with_numbers() -> None:
    problem = _slurm.parallel_layout(2, 8, 8, 3)["problem"]
    assert "TP 8 x PP 3 = 24 GPUs" in problem and "2 nodes x 8 GPUs = 16" in problem and "Fix:" in problem
    assert _slurm.parallel_layout(3, 8, 12, 2)["problem"].startswith("TP 12 does not split evenly")


# --- what SLURM prints ---------------------------------------------------------------------------


def test_sinfo_nodes_states_without_flags_and_gpus_from_typed_gres() -> None:
    nodes = {n["name"]: n for n in _slurm.parse_sinfo_nodes(SINFO)}
    assert sorted(nodes) == ["gpu01", "gpu02", "gpu03", "gpu04"]
    assert nodes["gpu03"]["state"] == "drained" and not nodes["gpu03"]["usable"]
    assert nodes["gpu02"]["usable"] and nodes["gpu01"]["gpus"] == 8 and nodes["gpu04"]["gpus"] == 4
    assert _slurm.gres_gpus("gpu:a100:2,gpu:h100:4(S:0)") == 6
    assert _slurm.gres_gpus("(null)") == 0


def test_capacity_fits() -> None:
    info = _slurm.parse_key_values(PARTITION)
    assert info["State"] == "UP" and info["TotalNodes"] == "4"
    assert _slurm.capacity_problem("gpu", info, _slurm.parse_sinfo_nodes(SINFO), 2, 8) == ""


def test_capacity_too_small_names_the_numbers_and_the_unusable_nodes() -> None:
    problem = FILTERS["slurm_capacity"](SINFO, "gpu", PARTITION, 3, 8)
    assert "needs 3 nodes x 8 GPUs = 24 GPUs" in problem
    assert "the partition has 4 nodes (28 GPUs), 2 of them up with 8 or more GPUs" in problem
    assert "gpu03 (drained)" in problem and "Fix:" in problem


def test_capacity_of_a_missing_or_down_partition() -> None:
    assert "does not exist" in FILTERS["slurm_capacity"]("", "gpux", "", 2, 8)
    down = PARTITION.replace("State=UP", "State=DOWN")
    assert "is DOWN, not UP" in FILTERS["slurm_capacity"](SINFO, "gpu", down, 1, 1)


def test_slurmd_c_gives_the_node_line_never_more_than_reported() -> None:
    found = _slurm.parse_slurmd_c(SLURMD_C)
    assert found["CPUs"] == 2 and found["RealMemory"] == 22899
    line = FILTERS["slurm_node_conf"](SLURMD_C, 1, 0.95)
    assert line.startswith("NodeName=node2 CPUs=2 ") and "RealMemory=21754" in line and line.endswith("Gres=gpu:1")
    assert "Gres" not in _slurm.node_conf(found, 0)
    with pytest.raises(Exception, match="no NodeName"):
        FILTERS["slurm_node_conf"]("slurmd: fatal", 1)


def test_scontrol_job_status() -> None:
    job = FILTERS["slurm_job"](JOB_RUNNING)
    assert job["job_id"] == "7" and job["running"] and not job["finished"]
    assert (job["nodes"], job["head"], job["output"]) == ("node[2-3]", "node2", "/srv/x/multinode-vllm-7.out")
    failed = FILTERS["slurm_job"](
        JOB_RUNNING.replace("RUNNING", "FAILED").replace("Reason=None", "Reason=NonZeroExitCode")
    )
    assert failed["finished"] and failed["reason"] == "NonZeroExitCode"
    assert FILTERS["slurm_job"]("") == {}


# --- identity and what to do with the jobs found -------------------------------------------------


def test_the_identity_follows_the_script_and_the_secrets() -> None:
    one = _slurm.job_identity("#!/bin/bash\nvllm serve a\n", "k1")
    assert one.startswith("multinode-vllm:") and len(one) == len("multinode-vllm:") + 40
    assert one == _slurm.job_identity("#!/bin/bash\nvllm serve a\n", "k1")
    assert one != _slurm.job_identity("#!/bin/bash\nvllm serve b\n", "k1")
    assert one != _slurm.job_identity("#!/bin/bash\nvllm serve a\n", "k2")


def test_an_unchanged_running_job_is_kept() -> None:
    script = "#!/bin/bash\nvllm serve a\n"
    comment = _slurm.job_identity(script)
    squeue = f"12|RUNNING|{comment}|node[2-3]|2:17|1:57:43|None\n9|COMPLETED|{comment}|node2|1:00|0:00|None\n"
    decision = FILTERS["slurm_decide"](squeue, script)
    assert (decision["keep"], decision["cancel"], decision["submit"]) == ("12", [], False)
    assert decision["jobs"][0]["time_left"] == "1:57:43"


def test_a_changed_script_cancels_the_old_job_and_submits() -> None:
    old = _slurm.job_identity("old")
    squeue = f"12|RUNNING|{old}|node[2-3]|2:17|1:57:43|None\n13|PENDING|(null)|||2:00:00|Resources\n"
    decision = FILTERS["slurm_decide"](squeue, "new")
    assert (decision["keep"], decision["cancel"], decision["submit"]) == ("", ["12", "13"], True)


def test_two_live_jobs_with_our_identity_keep_one() -> None:
    comment = _slurm.job_identity("s")
    jobs = _slurm.parse_squeue(f"5|RUNNING|{comment}|a|||None\n6|PENDING|{comment}||||Priority\n")
    assert _slurm.decide(jobs, comment) == {"keep": "5", "cancel": ["6"], "submit": False}
    assert _slurm.decide([], comment) == {"keep": "", "cancel": [], "submit": True}


# --- the slurm_job_wait module -------------------------------------------------------------------


class Health:
    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def health() -> Iterator[Health]:
    srv = Health()
    yield srv
    srv.httpd.shutdown()


def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: list[str], out_file: Path) -> None:
    """`scontrol show job` prints the next of `states` ("STATE REASON") on each call; show node: NodeAddr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    script = f"""#!/bin/sh
if [ "$2" = node ]; then echo "NodeName=node2 Arch=x86_64 NodeAddr=127.0.0.1 State=ALLOCATED"; exit 0; fi
line=$(head -n1 {tmp_path}/states); rest=$(tail -n +2 {tmp_path}/states)
[ -n "$rest" ] && printf '%s\\n' "$rest" > {tmp_path}/states
set -- $line
[ "$1" = GONE ] && {{ echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }}
echo "JobId=7 JobName=multinode-vllm JobState=$1 Reason=$2 RunTime=00:00:05 NodeList=node[2-3] \\
  BatchHost=node2 StdOut={out_file}"
"""
    tool = bin_dir / "scontrol"
    tool.write_text(script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def run_module(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        slurm_job_wait.main()
    return json.loads(capsys.readouterr().out)


def test_wait_reports_pending_reasons_then_runs_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], health: Health
) -> None:
    fake_scontrol(tmp_path, monkeypatch, ["PENDING Priority", "PENDING Resources", "RUNNING None"], tmp_path / "o")
    result = run_module(
        {"job_id": "7", "poll_interval": 0, "health_url": f"http://{{head}}:{health.port}/health"}, capsys
    )
    assert not result.get("failed"), result
    assert result["pending_reasons"] == ["Priority", "Resources"]
    assert result["job"]["head_addr"] == "127.0.0.1" and result["job"]["nodes"] == "node[2-3]"


def test_a_job_that_dies_stops_the_wait_with_its_output_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "multinode-vllm-7.out"
    out.write_text("".join(f"line {i}\n" for i in range(100)) + "ValueError: /models/missing is not a model\n")
    fake_scontrol(tmp_path, monkeypatch, ["RUNNING None", "RUNNING None", "FAILED NonZeroExitCode"], out)
    # nothing listens on port 9: the health wait polls while the job dies
    result = run_module(
        {"job_id": "7", "poll_interval": 0, "health_url": "http://{head}:9/health", "output_lines": 5}, capsys
    )
    assert result["failed"]
    assert result["msg"].startswith("SLURM job 7 ended before http://127.0.0.1:9/health answered")
    assert "reason: NonZeroExitCode" in result["msg"] and "/models/missing is not a model" in result["msg"]
    assert len(result["output_tail"]) == 5 and result["waited"] < 60  # not a timeout


def test_a_job_gone_from_the_queue_and_a_pending_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scontrol(tmp_path, monkeypatch, ["GONE"], tmp_path / "o")
    result = run_module({"job_id": "7", "poll_interval": 0}, capsys)
    assert result["failed"] and "SLURM job 7 left the queue before it ran" in result["msg"]

    (tmp_path / "bin" / "scontrol").unlink()
    (tmp_path / "bin").rmdir()
    fake_scontrol(tmp_path, monkeypatch, ["PENDING QOSMaxGRESPerUser"], tmp_path / "o")
    result = run_module({"job_id": "7", "poll_interval": 0, "timeout": 0}, capsys)
    assert result["failed"] and "still PENDING after 0 s (reason: QOSMaxGRESPerUser" in result["msg"]
    assert "Fix:" in result["msg"]


# --- the role's files ----------------------------------------------------------------------------


def test_the_sbatch_template_keeps_secrets_out_and_uses_srun_overlap() -> None:
    text = (ROOT / "roles/slurm/templates/vllm.sbatch.j2").read_text()
    assert 'srun --overlap -N1 -n1 -w "$HEAD"' in text and "--headless" in text
    assert "_slurm_secrets_path" in text and "_slurm_api_key" not in text and "hf_token" not in text


def test_the_install_templates_follow_the_verified_settings() -> None:
    conf = (ROOT / "roles/slurm/templates/slurm.conf.j2").read_text()
    for line in (
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "GresTypes=gpu",
    ):
        assert line in conf
    assert "cgroup" not in conf.replace("no cgroup plugin", "")
    gres = (ROOT / "roles/slurm/templates/gres.conf.j2").read_text()
    config = [ln for ln in gres.splitlines() if not ln.startswith("#")]
    assert "AutoDetect=off" in config and not any("Count=" in ln for ln in config)
    assert (
        "NodeName={{ hostvars[host]['ansible_facts']['hostname'] }} Name=gpu File={{ slurm_gres_file_prefix }}{{ gpu }}"
        in config
    )


# --- the planner before sbatch (playbooks/slurm.yml on a login host with stand-in SLURM commands) --

# The 405B config (inventories/slurm): 126 layers, bf16 weights of about 756 GiB.
LLAMA_405B = yaml.safe_load((ROOT / "inventories/slurm/group_vars/all/model.yml").read_text())["validate_model_config"]


def slurm_play(tmp_path: Path, playbook: str = "playbooks/slurm.yml", **overrides: Any) -> tuple[int, str]:
    """playbooks/slurm.yml against a local "login host" whose scontrol and sinfo print a 2 x 8 GPU partition;
    sbatch is not there: a run that gets past every check stops at the first command that needs it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = "gpu01|idle|gpu:h100:8|128|1000000\ngpu02|idle|gpu:h100:8|128|1000000"
    for name, out in (("scontrol", PARTITION.replace("TotalNodes=4", "TotalNodes=2")), ("sinfo", sinfo)):
        (bin_dir / name).write_text(f"#!/bin/sh\ncat <<'OUT'\n{out}\nOUT\n")
        (bin_dir / name).chmod(0o755)
    inventory = {
        "all": {
            "children": {"slurm_login": {"hosts": {"login": None}}},
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "multinode_model": "meta-llama/Llama-3.1-405B-Instruct",
                "multinode_api_key": "k" * 32,
                "validate_model_config": LLAMA_405B,
                "validate_gpu_memory_gib": 80,
                "slurm_nodes": 2,
                "slurm_gpus_per_node": 8,
                "slurm_workdir": str(tmp_path / "work"),
                "multinode_credentials_dir": str(tmp_path / "credentials"),
                **overrides,
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    proc = ansible_playbook("-i", str(tmp_path / "hosts.yml"), playbook, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_the_job_is_planned_against_gpu_memory_before_sbatch(tmp_path: Path) -> None:
    rc, out = slurm_play(tmp_path)
    # 2 x 8 x 80 GiB hold the 405B: the plan is shown, the run goes on to sbatch (absent here)
    assert "TP 8 x PP 2 on 2 nodes x 8 GPUs; weights 75" in out, out[-3000:]
    assert "Submit the job" in out or "sbatch" in out, out[-3000:]
    assert rc != 0  # no sbatch on this machine


def test_a_job_whose_weights_do_not_fit_stops_before_sbatch_with_the_numbers(tmp_path: Path) -> None:
    rc, out = slurm_play(tmp_path, validate_gpu_memory_gib=40)
    assert rc != 0
    assert "does not fit" in out and "validate_gpu_memory_gib=40" in out, out[-3000:]
    assert "Fix:" in out
    assert "TASK [multinode.vllm.slurm : Create the job's directory]" not in out
    assert not (tmp_path / "work").exists()


def test_the_planner_objection_names_the_variable_to_change(tmp_path: Path) -> None:
    # TP 3 on one node of 3 GPUs matches the job's GPUs, but 128 attention heads do not split in 3
    rc, out = slurm_play(
        tmp_path,
        slurm_nodes=1,
        slurm_gpus_per_node=3,
        vllm_serve_tensor_parallel_size=3,
        vllm_serve_pipeline_parallel_size=1,
    )
    assert rc != 0
    assert "The planner refused the settings" in out and "vllm_serve_tensor_parallel_size" in out, out[-3000:]
    assert "TASK [multinode.vllm.slurm : Create the job's directory]" not in out


@pytest.mark.parametrize(
    ("backend", "mode", "exported"),
    [("ray", "token", "token"), ("ray", "disabled", "disabled"), ("mp", "token", None)],
)
def test_the_job_gets_the_ray_token_file_never_the_token(
    tmp_path: Path, backend: str, mode: str, exported: str | None
) -> None:
    token = "T0ken" * 8
    rc, out = slurm_play(
        tmp_path, multinode_backend=backend, multinode_ray_auth_mode=mode, multinode_ray_auth_token=token
    )
    assert rc != 0 and "squeue" in out  # written, then stopped at the queue (no SLURM here)
    work = tmp_path / "work"
    script = (work / "multinode-vllm.sbatch").read_text()
    token_file = work / "multinode-vllm.ray-auth-token"
    assert token not in script and token not in out
    if exported == "token":
        assert "export RAY_AUTH_MODE=token" in script and f"export RAY_AUTH_TOKEN_PATH={token_file}" in script
        assert token_file.read_text() == token and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    else:
        assert not token_file.exists() and "RAY_AUTH_TOKEN_PATH" not in script
        assert ("export RAY_AUTH_MODE=disabled" in script) == (exported == "disabled")


def test_the_inventory_environment_reaches_the_job_through_the_secrets_file(tmp_path: Path) -> None:
    """multinode_node_env and vllm_serve_extra_env may hold tokens: their values go to the 0600 file the
    script sources (after its own exports, so they may override HF_HOME), never to the script's text."""
    rc, out = slurm_play(
        tmp_path,
        multinode_node_env={"WANDB_API_KEY": "wandb-s3cret", "HF_HOME": "/scratch/hf"},
        vllm_serve_extra_env={"VLLM_LOGGING_LEVEL": "DEBUG"},
    )
    assert rc != 0 and "squeue" in out  # written, then stopped at the queue (no SLURM here)
    work = tmp_path / "work"
    script = (work / "multinode-vllm.sbatch").read_text()
    secrets = work / "multinode-vllm.secrets"
    assert "wandb-s3cret" not in script and "wandb-s3cret" not in out and "DEBUG" not in script
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    lines = secrets.read_text().splitlines()
    assert "WANDB_API_KEY=wandb-s3cret" in lines and "VLLM_LOGGING_LEVEL=DEBUG" in lines
    assert "HF_HOME=/scratch/hf" in lines
    # sourced after the script's own exports: the inventory's HF_HOME wins, as on the hosts path
    assert script.index("export HF_HOME=") < script.index(f". {secrets}")


def test_data_parallel_on_the_ray_backend_is_refused_not_ignored(tmp_path: Path) -> None:
    rc, out = slurm_play(tmp_path, vllm_serve_data_parallel_size=2)  # the default backend: ray
    assert rc != 0
    assert "vllm_serve_data_parallel_size=2 with multinode_backend='ray': data parallel in a SLURM job runs" in out, (
        out[-3000:]
    )
    assert "Fix: set multinode_backend: mp" in out
    assert not (tmp_path / "work").exists()


def test_data_parallel_on_mp_runs_a_replica_per_node(tmp_path: Path) -> None:
    """DP 2 over 2 nodes x 8 GPUs: one TP 8 replica per node; the head coordinates, the other node runs
    its engine --headless from rank 1; planned per replica before sbatch."""
    llama_8b = json.loads((ROOT / "tests/fixtures/models/llama-3.1-8b/config.json").read_text())
    rc, out = slurm_play(
        tmp_path,
        multinode_backend="mp",
        vllm_serve_data_parallel_size=2,
        multinode_model="meta-llama/Llama-3.1-8B-Instruct",
        validate_model_config=llama_8b,
    )
    assert rc != 0 and "squeue" in out, out[-3000:]  # written, then stopped at the queue (no SLURM here)
    assert "DP 2 x TP 8 x PP 1 on 2 nodes x 8 GPUs" in out, out[-3000:]
    script = (tmp_path / "work" / "multinode-vllm.sbatch").read_text()
    assert '"--tensor-parallel-size" "8"' not in script  # the args are quoted one by one, as rendered below
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 1" in script.replace("'", "")
    assert '--data-parallel-size 2 --data-parallel-size-local "$DP_LOCAL"' in script and "DP_LOCAL=1" in script
    assert '--data-parallel-address "$HEAD_IP" --data-parallel-rpc-port 29550' in script
    assert "echo --headless --data-parallel-start-rank $((rank * DP_LOCAL))" in script
    assert "--nnodes" not in script


@pytest.mark.parametrize(
    ("nodes", "gpus", "dp", "tp", "pp", "words"),
    [
        (2, 8, 3, "", "", "does not spread evenly over 2 nodes"),
        (2, 8, 2, 4, "", "1 replicas of TP 4 x PP 1 on each node need 4 GPUs, the job's nodes have 8"),
    ],
)
def test_a_data_parallel_layout_that_does_not_fill_the_nodes_says_so(
    nodes: int, gpus: int, dp: int, tp: Any, pp: Any, words: str
) -> None:
    problem = _slurm.parallel_layout(nodes, gpus, tp, pp, dp)["problem"]
    assert words in problem and "Fix:" in problem, problem
    ok = _slurm.parallel_layout(2, 8, "", "", 4)
    assert (
        ok["problem"],
        ok["data_parallel_size_local"],
        ok["tensor_parallel_size"],
        ok["pipeline_parallel_size"],
    ) == (
        "",
        2,
        4,
        1,
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"vllm_serve_extra_args": ["--max-num-seqs 8"]}, 'vllm_serve_extra_args=["--max-num-seqs 8"] on login'),
        ({"vllm_serve_extra_args": ["--tensor-parallel-size", "4"]}, "vllm_serve_tensor_parallel_size"),
        ({"multinode_api_key": "{{ vault_multinode_api_key }}"}, "names vault_multinode_api_key, which is undefined"),
        ({"multinode_vllm_port": "80OO"}, "multinode_vllm_port"),
    ],
    ids=["glued-flag", "managed-flag", "undefined-vault-var", "bad-port"],
)
def test_the_validate_phase_checks_the_slurm_inventory_before_anything(
    tmp_path: Path, overrides: dict[str, Any], words: str
) -> None:
    """The variable checks of the hosts path run on the login host: a stop before the job's directory."""
    rc, out = slurm_play(tmp_path, **overrides)
    assert rc != 0
    # the validate phase's one task names the check that stopped the run
    assert "TASK [multinode.vllm.validate : Check the inventory" in out and "check: Stop if" in out, out[-3000:]
    assert words in out, out[-3000:]
    assert "Fix:" in out and not (tmp_path / "work").exists()


def test_a_misspelt_slurm_variable_is_named_with_a_suggestion(tmp_path: Path) -> None:
    _rc, out = slurm_play(tmp_path, slurm_partion="gpu")
    want = "WARNING: no role of multinode.vllm reads slurm_partion (on login; did you mean slurm_partition?)"
    assert want in out, out[-3000:]


def test_site_yml_submits_on_a_slurm_inventory(tmp_path: Path) -> None:
    """site.yml on an inventory of login hosts: validate (SLURM mode), the node phases find no hosts,
    the slurm phase plans and submits (here it stops at sbatch, which this machine lacks)."""
    rc, out = slurm_play(tmp_path, "site.yml")
    assert "SLURM inventory: the variables of login (slurm_login) are checked here" in out, out[-3000:]
    assert "PLAY [SLURM - submit the vLLM job and gate it]" in out
    assert "TP 8 x PP 2 on 2 nodes x 8 GPUs; weights 75" in out, out[-3000:]
    assert rc != 0 and "squeue" in out  # the script written, then stopped at the queue (no SLURM here)
    assert (tmp_path / "work" / "multinode-vllm.sbatch").is_file()


# --- the fabric rules inside the job (roles/slurm/files/job_fabric.py) ----------------------------


def link(name: str, address: str, prefixlen: int = 24) -> dict[str, Any]:
    """One interface as `ip -j addr` prints it, up, with one IPv4 address."""
    addr_info = [{"family": "inet", "local": address, "prefixlen": prefixlen}]
    return {"ifname": name, "flags": ["UP"], "operstate": "UP", "addr_info": addr_info}


IP_ADDR_BOND0 = [link("lo", "127.0.0.1", 8), link("eth0", "10.0.0.5"), link("bond0", "10.9.0.5")]
IP_ADDR_DROPLET = [link(f"eth{i}", f"10.{i}.0.5") for i in range(10)]
ROUTES = [{"dst": "default", "dev": "eth0", "metric": 0}]


def job_fabric(tmp_path: Path, addr: list[dict[str, Any]], routes: list[dict[str, Any]], **env: str) -> Any:
    """job_fabric.py as the job runs it: beside copies of _fabric.py and _ib.py, `ip -j` stood in for."""
    job = tmp_path / "job.fabric"
    job.mkdir(parents=True)
    shutil.copy(ROOT / "roles/slurm/files/job_fabric.py", job)
    for name in ("_fabric.py", "_ib.py"):
        shutil.copy(ROOT / "plugins/module_utils" / name, job)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "addr.json").write_text(json.dumps(addr))
    (tmp_path / "route.json").write_text(json.dumps(routes))
    (bin_dir / "ip").write_text(f'#!/bin/sh\nshift\ncat "{tmp_path}/$1.json"\n')
    (bin_dir / "ip").chmod(0o755)
    return subprocess.run(
        [sys.executable, str(job / "job_fabric.py")],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "MNV_SYSFS_ROOT": str(tmp_path / "sys"), **env},
    )


def test_the_job_picks_each_nodes_fabric_by_the_hosts_rules(tmp_path: Path) -> None:
    proc = job_fabric(tmp_path, IP_ADDR_BOND0, ROUTES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "export NODE_IP=10.9.0.5 NCCL_SOCKET_IFNAME=bond0 GLOO_SOCKET_IFNAME=bond0"
    assert "fabric (bond0 present (bare metal))" in proc.stderr


def test_the_job_takes_the_droplet_rails_and_the_active_hcas(tmp_path: Path) -> None:
    port = tmp_path / "sys/class/infiniband/mlx5_0/ports/1"
    port.mkdir(parents=True)
    for name, text in (("state", "4: ACTIVE"), ("phys_state", "5: LinkUp"), ("rate", "400 Gb/sec (4X NDR)")):
        (port / name).write_text(text + "\n")
    proc = job_fabric(tmp_path, IP_ADDR_DROPLET, ROUTES)
    assert proc.returncode == 0, proc.stderr
    rails = ",".join(f"eth{i}" for i in range(2, 10))
    assert proc.stdout.strip() == (
        f"export NODE_IP=10.2.0.5 NCCL_SOCKET_IFNAME={rails} GLOO_SOCKET_IFNAME=eth2 NCCL_IB_HCA=mlx5_0"
    )
    # given, the inventory's interface and HCAs win
    given = job_fabric(tmp_path / "given", IP_ADDR_DROPLET, ROUTES, MNV_CONTROL_INTERFACE="eth1", MNV_IB_HCA="mlx5_7")
    assert "NODE_IP=10.1.0.5" in given.stdout and "NCCL_IB_HCA=mlx5_7" in given.stdout, given.stderr


def test_a_node_whose_fabric_cannot_be_used_ends_the_step_saying_why(tmp_path: Path) -> None:
    proc = job_fabric(tmp_path, IP_ADDR_BOND0, ROUTES, MNV_CONTROL_INTERFACE="ib0")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "the fabric of" in proc.stderr and "interface ib0 does not exist on this host" in proc.stderr
    assert "set slurm_fabric_interface to the fabric interface" in proc.stderr, proc.stderr
