#!/usr/bin/env python3
"""What the automation costs: converge time against the same Ray + vLLM started by hand, how it
grows with the number of nodes, and whether our launch serves as fast as the same command by hand.

On the local test bed (inventories/local; brought up and converged once by `multinode-vllm up`),
with the native runtime and the ray backend (the by-hand commands are read from the units):

1. teardown, then `site.yml` through the runner API: first-run time from stopped, tasks per node;
2. `site.yml` again: rerun time (everything in place: changed must be 0), tasks per node;
3. the same Ray head, Ray workers and `vllm serve` (the commands and env files site.yml deployed,
   read from the units) started by hand over ssh after stopping the units, timed until a chat
   completion returns text (--skip-hand leaves this out);
4. with --throughput: `vllm bench serve` on the head (the node venv's vLLM, as roles/vllm_bench
   runs it) against our launch (the units site.yml deployed) and against the by-hand processes
   of step 3, counterbalanced (ours, hand, hand, ours, ours, hand, ...: a drift of the machine falls
   on both arms alike), every run right after a fresh start of its arm, --throughput-runs runs of
   --num-prompts requests each, the same seed (the same prompts) every run; a chat completion must
   answer before each run;
5. teardown;
6. with --nodes-compare N: a second test bed of N nodes (TP 1 x PP 2: the other nodes are spare Ray
   nodes) is brought up, converged once from bare nodes, torn down, then timed like 1-2 and taken
   down: the N-node / 2-node ratios of the first run and the rerun.

Writes benchmarks/results/overhead-<UTC>.json (every figure), .png (the chart) and .md (the README
table); prints the JSON summary, then the Markdown table.

    .venv/bin/python benchmarks/overhead.py [-i inventories/local] [--skip-hand]
    .venv/bin/python benchmarks/overhead.py --throughput [--throughput-runs 3] [--num-prompts 200]
    .venv/bin/python benchmarks/overhead.py --no-converge --throughput   # throughput only
    .venv/bin/python benchmarks/overhead.py --nodes-compare 8
    .venv/bin/python benchmarks/overhead.py --report benchmarks/results/overhead-<UTC>.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from multinode_vllm import PROJECT_DIR, RunOptions, run
from multinode_vllm.commands.bench import Endpoint, chat_once, head_host, inventory_vars

RESULTS = PROJECT_DIR / "benchmarks" / "results"
#: Where `vllm bench serve` writes its result JSON on the head (read back over ssh).
REMOTE_DIR = "/var/tmp/multinode-vllm-overhead"
#: The pid of the vllm serve started by hand, on the head.
PIDFILE = "/tmp/overhead-vllm.pid"
#: The inventory of the N-node bed: one pipeline of 2 stages, the other nodes spare Ray nodes.
SCALE_VARS: dict[str, Any] = {"vllm_serve_tensor_parallel_size": 1, "vllm_serve_pipeline_parallel_size": 2}
#: Issue 12's "Must show" targets: (lowest, highest) accepted.
TARGETS: dict[str, tuple[float, float]] = {
    "first_over_by_hand": (0.0, 1.25),
    "rerun_over_first": (0.0, 0.25),
    "scale_first": (0.0, 1.3),
    "scale_rerun": (0.0, 1.3),
    "throughput_ratio": (0.95, 1.05),
}
#: The scalar fields of a `vllm bench serve` result kept per run (vllm/benchmarks/serve.py).
BENCH_KEYS = (
    "num_prompts",
    "completed",
    "failed",
    "duration",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "max_concurrency",
    "median_ttft_ms",
    "median_tpot_ms",
)


# ------------------------------------------------------------------------ pure: runs and ratios
def task_counts(result: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Tasks each host ran, from a runner result dict (``RunResult.to_dict()``: hosts -> stats).

    Ansible counts a changed task in both ``ok`` and ``changed``, an ignored failure in ``ok`` and a
    rescued one in ``rescued`` only: a host ran ``ok + skipped + failed + unreachable + rescued``.
    """
    out: dict[str, dict[str, int]] = {}
    for host, st in sorted((result.get("hosts") or {}).items()):
        n = {k: int(st.get(k) or 0) for k in ("ok", "changed", "skipped", "failed", "unreachable", "rescued")}
        tasks = n["ok"] + n["skipped"] + n["failed"] + n["unreachable"] + n["rescued"]
        out[host] = {"tasks": tasks, "ok": n["ok"], "changed": n["changed"], "skipped": n["skipped"]}
    return out


def changed_total(result: Mapping[str, Any]) -> int:
    return sum(int(h.get("changed") or 0) for h in (result.get("hosts") or {}).values())


def ratio(num: Any, den: Any, digits: int = 3) -> float | None:
    """num / den rounded, or None when either is missing or den is not positive."""
    if not isinstance(num, int | float) or not isinstance(den, int | float) or den <= 0:
        return None
    return round(num / den, digits)


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill in the ratios of a results document (idempotent) and return the headline figures."""
    for key, (num, den) in {
        "rerun_over_first": ("rerun_s", "first_s"),
        "first_over_by_hand": ("first_s", "by_hand_s"),
    }.items():
        r = ratio(doc.get(num), doc.get(den))
        if r is not None:
            doc[key] = r
    scale = doc.get("scale") or {}
    if scale:
        for which in ("first", "rerun"):
            r = ratio(scale.get(f"{which}_s"), doc.get(f"{which}_s"))
            if r is not None:
                scale[f"{which}_over_2"] = r
    out: dict[str, Any] = {}
    for key in ("first_s", "first_changed", "rerun_s", "rerun_changed", "rerun_over_first", "by_hand_s"):
        if key in doc:
            out[key] = doc[key]
    if "first_over_by_hand" in doc:
        out["first_over_by_hand"] = doc["first_over_by_hand"]
    for which in ("first", "rerun"):
        if f"{which}_tasks" in doc:
            out[f"{which}_tasks"] = {h: c["tasks"] for h, c in doc[f"{which}_tasks"].items()}
    if scale:
        out["scale_nodes"] = scale.get("nodes")
        for which in ("first", "rerun"):
            for key in (f"{which}_s", f"{which}_over_2"):
                if key in scale:
                    out[f"scale_{key}"] = scale[key]
        if "rerun_changed" in scale:
            out["scale_rerun_changed"] = scale["rerun_changed"]
    tp = doc.get("throughput") or {}
    if tp:
        out["ours_tok_s"] = (tp.get("ours") or {}).get("mean")
        out["hand_tok_s"] = (tp.get("hand") or {}).get("mean")
        out["throughput_ratio"] = tp.get("ratio")
        out["throughput_ratio_se"] = tp.get("ratio_se")
    return out


# ------------------------------------------------------------------------ pure: throughput
def alternation(runs: int) -> list[tuple[str, int]]:
    """The order of the throughput runs, counterbalanced (ABBA): ours 1, hand 1, hand 2, ours 2, ours 3,
    hand 3, ... A drift of the machine over the runs (2-s runs measured 2026-12-07: every arm slower
    by the third pair) then falls on both arms alike, where ours-first in every pair favoured ours."""
    return [(arm, i) for i in range(1, runs + 1) for arm in (("ours", "hand") if i % 2 else ("hand", "ours"))]


def bench_run_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar figures of one `vllm bench serve` result JSON."""
    if "output_throughput" not in result or "completed" not in result:
        raise ValueError("not a `vllm bench serve` result: no output_throughput / completed")
    out = {k: result[k] for k in BENCH_KEYS if k in result and result[k] is not None}
    if "failed" not in out and "num_prompts" in out:
        out["failed"] = int(out["num_prompts"]) - int(out["completed"])
    return out


def arm_stats(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Output tok/s of one arm's runs: each run's figure, mean, sample stdev, min, max."""
    tok = [float(r["output_throughput"]) for r in runs]
    return {
        "runs": [dict(r) for r in runs],
        "output_tok_s": [round(t, 3) for t in tok],
        "n": len(tok),
        "mean": round(statistics.fmean(tok), 3) if tok else None,
        "stdev": round(statistics.stdev(tok), 3) if len(tok) > 1 else 0.0 if tok else None,
        "min": round(min(tok), 3) if tok else None,
        "max": round(max(tok), 3) if tok else None,
        "failed_requests": sum(int(r.get("failed") or 0) for r in runs),
    }


def throughput_summary(ours: Sequence[Mapping[str, Any]], hand: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Both arms and the ratio of their means, with its standard error (from each arm's spread)."""
    o, h = arm_stats(ours), arm_stats(hand)
    out: dict[str, Any] = {"ours": o, "hand": h, "ratio": ratio(o["mean"], h["mean"], 4), "ratio_se": None}
    if out["ratio"] is not None and o["n"] and h["n"]:
        rel = (o["stdev"] / o["mean"]) ** 2 / o["n"] + (h["stdev"] / h["mean"]) ** 2 / h["n"]
        out["ratio_se"] = round(out["ratio"] * math.sqrt(rel), 4)
    return out


def bench_serve_argv(
    cli: Sequence[str],
    *,
    base_url: str,
    model: str,
    tokenizer: str | None,
    num_prompts: int,
    input_len: int,
    output_len: int,
    max_concurrency: int,
    seed: int,
    result_dir: str,
    result_filename: str,
    ready_timeout: int = 60,
) -> list[str]:
    """`vllm bench serve` as roles/vllm_bench runs it (the API key is never on it)."""
    argv = [*cli, "bench", "serve", "--backend", "openai-chat", "--base-url", base_url]
    argv += ["--endpoint", "/v1/chat/completions", "--dataset-name", "random"]
    argv += ["--random-input-len", str(input_len), "--random-output-len", str(output_len)]
    argv += ["--num-prompts", str(num_prompts), "--max-concurrency", str(max_concurrency)]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"]
    argv += ["--seed", str(seed), "--ready-check-timeout-sec", str(ready_timeout), "--disable-tqdm"]
    argv += ["--save-result", "--result-dir", result_dir, "--result-filename", result_filename]
    argv += ["--model", model, "--served-model-name", model]
    if tokenizer:
        argv += ["--tokenizer", tokenizer]
    return argv


def keyed_command(argv: Sequence[str], with_key: bool) -> str:
    """The remote command line: with a key, the first line of stdin becomes OPENAI_API_KEY (which
    `vllm bench serve` sends as the bearer token), so the key is on no command line."""
    if with_key:
        argv = ["/bin/sh", "-c", 'IFS= read -r OPENAI_API_KEY; export OPENAI_API_KEY; exec "$@"', "vllm-bench", *argv]
    return " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------ pure: units
def exec_start(unit_text: str) -> tuple[list[str], str | None]:
    """(argv, EnvironmentFile) of a unit as `systemctl cat` prints it (systemd quoting undone)."""
    argv: list[str] = []
    env_file = None
    for line in unit_text.splitlines():
        if line.startswith("ExecStart="):
            argv = [a.replace("$$", "$").replace("%%", "%") for a in shlex.split(line[len("ExecStart=") :])]
        elif line.startswith("EnvironmentFile="):
            env_file = line.split("=", 1)[1].lstrip("-")
    if not argv:
        raise SystemExit("overhead: the unit has no ExecStart (did site.yml run with the native runtime?)")
    return argv, env_file


def by_hand_command(argv: list[str], env_file: str | None, log: str) -> str:
    """The unit's command as someone types it over ssh: its env file sourced, in the background
    (`ray start` without --block returns once the node runs; vllm serve under nohup)."""
    args = [a for a in argv if a != "--block"]
    source = f"set -a; . {shlex.quote(env_file)}; set +a; " if env_file else ""
    cmd = " ".join(shlex.quote(a) for a in args)
    if args[0].endswith("/ray"):
        return f"{source}{cmd} >{log} 2>&1"
    return f"{source}nohup {cmd} >{log} 2>&1 </dev/null & echo $!"


def env_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            return shlex.split(line.split("=", 1)[1])[0] if line.split("=", 1)[1] else ""
    return None


def arg_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in an argv (the last one wins), else None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1 :]
    return value


def served_model_path(vllm_argv: Sequence[str]) -> str | None:
    """The model `vllm serve` loads: its positional argument, else --model."""
    if len(vllm_argv) > 2 and vllm_argv[1] == "serve" and not vllm_argv[2].startswith("-"):
        return vllm_argv[2]
    return arg_value(vllm_argv, "--model")


def local_host(vllm_argv: Sequence[str]) -> str:
    """Where the server answers on its own node: its --host, loopback when it binds every address."""
    host = arg_value(vllm_argv, "--host")
    return "127.0.0.1" if host in (None, "", "0.0.0.0", "::") else str(host)


# ------------------------------------------------------------------------ pure: report
def _fmt_s(v: Any) -> str:
    return f"{v:.1f} s" if isinstance(v, int | float) else "–"


def _fmt_x(v: Any) -> str:
    return f"{v:.2f}×" if isinstance(v, int | float) else "–"


def _met(key: str, v: Any) -> str:
    if not isinstance(v, int | float):
        return ""
    lo, hi = TARGETS[key]
    return "yes" if lo <= v <= hi else "no"


def _target(key: str) -> str:
    lo, hi = TARGETS[key]
    return f"≤ {hi}" if lo == 0 else f"{(lo + hi) / 2:.2f} ± {(hi - lo) / 2:.2f}"


def markdown_table(doc: Mapping[str, Any]) -> str:
    """The README table: one row per figure, with issue 12's target and whether it is met."""
    date = str(doc.get("date", ""))[:10]
    rows: list[tuple[str, str, str, str]] = []
    nodes = len([h for h in doc.get("first_tasks") or {} if h != "localhost"]) or 2
    if "by_hand_s" in doc:
        rows.append(("Ray + vLLM started by hand over ssh", _fmt_s(doc["by_hand_s"]), "", ""))
    if "first_s" in doc:
        rows.append((f"site.yml from stopped, {nodes} nodes", _fmt_s(doc["first_s"]), "", ""))
    if "first_over_by_hand" in doc:
        v = doc["first_over_by_hand"]
        rows.append(("first run / by hand", _fmt_x(v), _target("first_over_by_hand"), _met("first_over_by_hand", v)))
    if "rerun_s" in doc:
        changed = doc.get("rerun_changed")
        met = "" if changed is None else "yes" if changed == 0 else "no"
        rows.append(
            (f"rerun (changed={'?' if changed is None else changed})", _fmt_s(doc["rerun_s"]), "changed=0", met)
        )
    if "rerun_over_first" in doc:
        v = doc["rerun_over_first"]
        rows.append(("rerun / first run", _fmt_x(v), _target("rerun_over_first"), _met("rerun_over_first", v)))
    first, rerun = doc.get("first_tasks") or {}, doc.get("rerun_tasks") or {}
    if first or rerun:
        cells = ", ".join(
            f"{h} {first.get(h, {}).get('tasks', '–')} / {rerun.get(h, {}).get('tasks', '–')}"
            for h in sorted(set(first) | set(rerun))
        )
        rows.append(("tasks per node, first run / rerun", cells, "", ""))
    scale = doc.get("scale") or {}
    if scale:
        n = scale.get("nodes", "N")
        if "first_s" in scale:
            rows.append((f"site.yml from stopped, {n} nodes", _fmt_s(scale["first_s"]), "", ""))
        if "rerun_s" in scale:
            label = f"rerun, {n} nodes (changed={scale.get('rerun_changed', '?')})"
            rows.append((label, _fmt_s(scale["rerun_s"]), "", ""))
        for which, label in (("first", "first run"), ("rerun", "rerun")):
            v = scale.get(f"{which}_over_2")
            if v is not None:
                key = f"scale_{which}"
                rows.append((f"{n} nodes / 2 nodes, {label}", _fmt_x(v), _target(key), _met(key, v)))
    tp = doc.get("throughput") or {}
    if tp:
        o, h = tp.get("ours") or {}, tp.get("hand") or {}
        st = tp.get("settings") or {}
        runs = f"{o.get('n', '?')}+{h.get('n', '?')} runs × {st.get('num_prompts', '?')} requests"
        for arm, label in ((o, "our launch"), (h, "by hand")):
            rows.append((f"output tok/s, {label}", f"{arm.get('mean', 0):.1f} ± {arm.get('stdev', 0):.1f}", "", ""))
        v, se = tp.get("ratio"), tp.get("ratio_se")
        cell = f"{v:.3f} ± {se:.3f}" if isinstance(v, float) and isinstance(se, float) else _fmt_x(v)
        rows.append(
            (f"output tok/s, ours / by hand ({runs})", cell, _target("throughput_ratio"), _met("throughput_ratio", v))
        )
    lines = [f"| Measured {date} | Value | Target | Met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def write_chart(doc: Mapping[str, Any], png: Path) -> Path:
    """Bars of the converge times (and N nodes), and throughput ours vs by hand with each run's dot."""
    # matplotlib is in the `dev` extra (requirements/dev.lock): only the chart needs it
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    bars: list[tuple[str, float, str]] = []
    for label, key, color in (
        ("by hand", "by_hand_s", "#55A868"),
        ("first run", "first_s", "#4C72B0"),
        ("rerun", "rerun_s", "#8172B3"),
    ):
        if isinstance(doc.get(key), int | float):
            bars.append((f"{label}\n2 nodes" if key != "by_hand_s" else label, float(doc[key]), color))
    scale = doc.get("scale") or {}
    for label, key, color in (("first run", "first_s", "#4C72B0"), ("rerun", "rerun_s", "#8172B3")):
        if isinstance(scale.get(key), int | float):
            bars.append((f"{label}\n{scale.get('nodes', 'N')} nodes", float(scale[key]), color))
    tp = doc.get("throughput") or {}
    panels = int(bool(bars)) + int(bool(tp))
    if not panels:
        raise ValueError("nothing to draw: the results hold no time and no throughput")
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    ax_iter = iter(axes[0])
    if bars:
        ax = next(ax_iter)
        xs = range(len(bars))
        ax.bar(xs, [b[1] for b in bars], color=[b[2] for b in bars], alpha=0.9)
        for x, (_, v, _) in zip(xs, bars, strict=True):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
        ax.set_ylabel("seconds")
        sub = []
        if doc.get("first_over_by_hand") is not None:
            sub.append(f"first/by hand {doc['first_over_by_hand']:.2f}×")
        if doc.get("rerun_over_first") is not None:
            sub.append(f"rerun/first {doc['rerun_over_first']:.2f}×")
        ax.set_title("Converge\n" + ", ".join(sub), fontsize=10)
    if tp:
        ax = next(ax_iter)
        labels = []
        for x, (arm, label, color) in enumerate((("ours", "our launch", "#4C72B0"), ("hand", "by hand", "#55A868"))):
            st = tp.get(arm) or {}
            mean, stdev = st.get("mean") or 0.0, st.get("stdev") or 0.0
            ax.bar(x, mean, yerr=stdev, color=color, alpha=0.6, capsize=6)
            dots = st.get("output_tok_s") or []
            spread = [x + (i - (len(dots) - 1) / 2) * 0.08 for i in range(len(dots))]
            ax.scatter(spread, dots, color="black", s=14, zorder=3)
            labels.append(f"{label}\n{mean:.1f} ± {stdev:.1f} tok/s, {len(dots)} runs")
        ax.set_xticks([0, 1], labels, fontsize=8)
        ax.set_ylabel("output tok/s")
        r, se = tp.get("ratio"), tp.get("ratio_se")
        caption = "" if r is None else f"ours/hand {r:.3f}" + (f" ± {se:.3f}" if se is not None else "")
        n = (tp.get("settings") or {}).get("num_prompts")
        caption += f", {n} requests a run" if n else ""
        ax.set_title(f"Served throughput\n{caption}", fontsize=10)
    fig.suptitle(f"multinode.vllm overhead — {str(doc.get('date', ''))[:16]}", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_outputs(doc: dict[str, Any], results_dir: Path, stamp: str) -> tuple[Path, Path, Path]:
    """overhead-<stamp>.json / .png / .md in results_dir."""
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"overhead-{stamp}"
    png, md, out = base.with_suffix(".png"), base.with_suffix(".md"), base.with_suffix(".json")
    doc["chart"], doc["table"] = str(write_chart(doc, png)), str(md)
    md.write_text(markdown_table(doc) + "\n")
    out.write_text(json.dumps(doc, indent=2))
    return out, png, md


# ------------------------------------------------------------------------ the test bed
def timed_run(
    inventory: str | Path, playbook: str, extra_vars: Mapping[str, Any] | None = None, **kw: Any
) -> tuple[float, dict[str, Any]]:
    t = time.monotonic()
    opts = RunOptions(inventory=inventory, playbook=playbook, extra_vars=dict(extra_vars or {}), **kw)
    result = run(opts).to_dict()
    if result.get("status") != "successful":
        raise SystemExit(f"overhead: {playbook} did not succeed ({result.get('status')}): {result.get('failures')}")
    return time.monotonic() - t, result


def converge(inventory: str | Path, extra_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Teardown, site.yml from stopped, site.yml again: times, changed and tasks per node."""
    timed_run(inventory, "playbooks/teardown.yml", extra_vars)
    doc: dict[str, Any] = {}
    for which in ("first", "rerun"):
        secs, result = timed_run(inventory, "site.yml", extra_vars)
        doc[f"{which}_s"], doc[f"{which}_run"] = round(secs, 2), result
        doc[f"{which}_changed"] = changed_total(result)
        doc[f"{which}_tasks"] = task_counts(result)
    if doc["rerun_changed"]:
        print(f"overhead: the rerun changed {doc['rerun_changed']} tasks (expected 0)", file=sys.stderr)
    return doc


ROUND_KEYS = ("first_s", "rerun_s", "by_hand_s", "first_changed", "rerun_changed")


def median_rounds(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Alternated rounds (first run, rerun, by hand): each round's figures, the times' medians (the
    machine's noise is larger than one run can tell), and the largest changed= of the reruns."""
    out: dict[str, Any] = {"rounds": [{k: r[k] for k in ROUND_KEYS if k in r} for r in rounds]}
    for key in ("first_s", "rerun_s", "by_hand_s"):
        values = [r[key] for r in rounds if key in r]
        if values:
            out[key] = round(statistics.median(values), 2)
    out["rerun_changed"] = max(int(r.get("rerun_changed") or 0) for r in rounds)
    return out


def ssh_argv(hv: Mapping[str, Any], host: str) -> list[str]:
    """ssh to a node the way the inventory says Ansible does."""
    argv = [
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    if hv.get("ansible_ssh_private_key_file"):
        argv += ["-i", str(hv["ansible_ssh_private_key_file"])]
    if hv.get("ansible_port"):
        argv += ["-p", str(hv["ansible_port"])]
    user = hv.get("ansible_user") or "root"
    argv.append(f"{user}@{hv.get('ansible_host') or host}")
    return argv


def sh(hv: Mapping[str, Any], host: str, command: str, timeout: float = 120, *, check: bool = True) -> str:
    out = subprocess.run([*ssh_argv(hv, host), command], capture_output=True, text=True, timeout=timeout, check=check)
    return out.stdout


@dataclass(frozen=True)
class Deployment:
    """What site.yml deployed, read from the units: the by-hand commands and the endpoint."""

    head: str
    workers: tuple[str, ...]
    hostvars: Mapping[str, Mapping[str, Any]]
    head_cmd: tuple[list[str], str | None]
    worker_cmds: Mapping[str, tuple[list[str], str | None]]
    vllm_cmd: tuple[list[str], str | None]
    endpoint: Endpoint  # as the controller reaches it (the head's management address)

    @property
    def hv(self) -> Mapping[str, Any]:
        return self.hostvars[self.head]

    @property
    def ray(self) -> str:
        return self.head_cmd[0][0]

    @property
    def ray_address(self) -> str:
        argv = self.head_cmd[0]
        ip = arg_value(argv, "--node-ip-address") or self.hv.get("ansible_host") or self.head
        return f"{ip}:{arg_value(argv, '--port') or 6379}"


def read_deployment(inventory: str | Path) -> Deployment:
    listing = inventory_vars(inventory)
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    head = head_host(listing)
    workers = tuple((listing.get("ray_workers") or {}).get("hosts") or [])
    hv = hostvars[head]
    head_cmd = exec_start(sh(hv, head, "systemctl cat ray-head"))
    vllm_argv, vllm_env = exec_start(sh(hv, head, "systemctl cat vllm"))
    worker_cmds = {w: exec_start(sh(hostvars[w], w, "systemctl cat ray-worker")) for w in workers}
    env_text = sh(hv, head, f"cat {shlex.quote(vllm_env)}") if vllm_env else ""
    port = arg_value(vllm_argv, "--port") or "8000"
    ep = Endpoint(
        f"http://{hv.get('ansible_host') or head}:{port}",
        api_key=env_value(env_text, "VLLM_API_KEY"),
        model=arg_value(vllm_argv, "--served-model-name"),
    )
    return Deployment(head, workers, hostvars, head_cmd, worker_cmds, (vllm_argv, vllm_env), ep)


def wait_chat(ep: Endpoint, timeout: float, what: str) -> None:
    """Until a real chat completion returns (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chat_once(ep, "hello", max_tokens=4, timeout=30)
            return
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            if time.monotonic() > deadline:
                raise SystemExit(f"overhead: {what} never answered a chat completion in {timeout:.0f} s") from None
            time.sleep(1)


def stop_units(d: Deployment) -> None:
    sh(d.hv, d.head, "systemctl stop vllm", timeout=120)
    for w in d.workers:
        sh(d.hostvars[w], w, "systemctl stop ray-worker", timeout=120)
    sh(d.hv, d.head, "systemctl stop ray-head", timeout=120)


def wait_ray_nodes(d: Deployment, count: int, timeout: float) -> None:
    """Until Ray on the head sees ``count`` alive nodes (the cluster phase's gate, from here)."""
    from multinode_vllm.module_utils import _ray  # noqa: PLC0415

    python = str(Path(d.ray).parent / "python")
    # The head unit's env file first: with Ray token auth it names the token file, and a client
    # without it is refused (the product's ray_cluster_info gets the same env).
    env_file = d.head_cmd[1]
    source = f"set -a; . {shlex.quote(env_file)}; set +a; " if env_file else ""
    query = source + " ".join(shlex.quote(a) for a in _ray.build_query_argv([python], d.ray_address, 30))
    deadline = time.monotonic() + timeout
    seen, why = 0, ""
    while time.monotonic() < deadline:
        try:
            out = sh(d.hv, d.head, query, timeout=60, check=False)
            seen = _ray.summarize(_ray.parse_nodes_output(out))["alive_count"]
        except (_ray.RayQueryError, ValueError, subprocess.TimeoutExpired) as exc:
            seen, why = 0, f" (last query: {str(exc)[:300]})"
        if seen >= count:
            return
        time.sleep(1)
    raise SystemExit(f"overhead: Ray on {d.head} sees {seen} of {count} nodes after {timeout:.0f} s{why}")


def start_units(d: Deployment, timeout: float) -> float:
    """Our launch again: the units started with systemctl (Ray whole before vLLM), until a chat answers."""
    t = time.monotonic()
    sh(d.hv, d.head, "systemctl start ray-head", timeout=120)
    for w in d.workers:
        sh(d.hostvars[w], w, "systemctl start ray-worker", timeout=120)
    wait_ray_nodes(d, 1 + len(d.workers), timeout)
    sh(d.hv, d.head, "systemctl start vllm", timeout=120)
    wait_chat(d.endpoint, timeout, "vllm started by its unit")
    return time.monotonic() - t


def start_by_hand(d: Deployment, timeout: float) -> tuple[float, str]:
    """The units' commands typed over ssh (units stopped before): seconds until a chat answers, vLLM's pid."""
    t = time.monotonic()
    sh(d.hv, d.head, by_hand_command(*d.head_cmd, "/tmp/overhead-ray-head.log"), timeout=180)
    for w, cmd in d.worker_cmds.items():
        sh(d.hostvars[w], w, by_hand_command(*cmd, "/tmp/overhead-ray-worker.log"), timeout=180)
    # the pid is kept on the head too, so that a failed wait can still stop the process
    pid = sh(d.hv, d.head, by_hand_command(*d.vllm_cmd, "/tmp/overhead-vllm.log") + f" | tee {PIDFILE}").strip()
    wait_chat(d.endpoint, timeout, "vllm started by hand (/tmp/overhead-vllm.log on the head)")
    return time.monotonic() - t, pid


def stop_by_hand(d: Deployment, pid: str = "") -> None:
    """vLLM first, until it is gone (bounded), then Ray everywhere; no pid: the one the head kept."""
    p = str(int(pid)) if pid else f"$(cat {PIDFILE} 2>/dev/null)"
    ray = shlex.quote(d.ray)
    script = (
        f'p={p}; if [ -n "$p" ]; then kill "$p" 2>/dev/null; '
        f'for _ in $(seq 120); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done; fi; '
        f"rm -f {PIDFILE}; {ray} stop --force"
    )
    sh(d.hv, d.head, script, timeout=180)
    for w in d.workers:
        sh(d.hostvars[w], w, f"{ray} stop --force", timeout=120)


def by_hand(inventory: str | Path, timeout: float = 600) -> float:
    """The same Ray head, Ray workers and vllm serve, typed over ssh as the seed guides do.

    The commands are the ones site.yml deployed (read from the units and their env files, so both
    runs start exactly the same processes); the units are stopped first and left stopped.
    """
    d = read_deployment(inventory)
    stop_units(d)
    elapsed, pid = start_by_hand(d, timeout)
    stop_by_hand(d, pid)
    return elapsed


@dataclass(frozen=True)
class BenchSettings:
    num_prompts: int
    input_len: int
    output_len: int
    max_concurrency: int
    seed: int = 0


def bench_settings(args: argparse.Namespace, hv: Mapping[str, Any]) -> BenchSettings:
    """The flags, else the inventory's vllm_bench_* sizes, else the role's defaults."""

    def pick(flag: int | None, var: str, default: int) -> int:
        if flag is not None:
            return flag
        try:
            return int(hv.get(var, default))
        except (TypeError, ValueError):  # a template: ansible-inventory does not render it
            return default

    return BenchSettings(
        num_prompts=args.num_prompts,
        input_len=pick(args.input_len, "vllm_bench_input_len", 128),
        output_len=pick(args.output_len, "vllm_bench_output_len", 128),
        max_concurrency=pick(args.max_concurrency, "vllm_bench_max_concurrency", 16),
        seed=args.seed,
    )


def bench_once(d: Deployment, s: BenchSettings, name: str, timeout: float) -> dict[str, Any]:
    """One `vllm bench serve` on the head with the node venv's vLLM; its result's figures."""
    vllm_argv = d.vllm_cmd[0]
    port = arg_value(vllm_argv, "--port") or "8000"
    argv = bench_serve_argv(
        [vllm_argv[0]],
        base_url=f"http://{local_host(vllm_argv)}:{port}",
        model=d.endpoint.model or served_model_path(vllm_argv) or "",
        tokenizer=served_model_path(vllm_argv),
        num_prompts=s.num_prompts,
        input_len=s.input_len,
        output_len=s.output_len,
        max_concurrency=s.max_concurrency,
        seed=s.seed,
        result_dir=REMOTE_DIR,
        result_filename=name,
    )
    key = d.endpoint.api_key
    proc = subprocess.run(
        [*ssh_argv(d.hv, d.head), keyed_command(argv, bool(key))],
        input=f"{key}\n" if key else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        if key:
            tail = tail.replace(key, "****")
        raise SystemExit(f"overhead: vllm bench serve exited {proc.returncode}:\n{tail}")
    result = json.loads(sh(d.hv, d.head, f"cat {shlex.quote(REMOTE_DIR + '/' + name)}"))
    return bench_run_summary(result)


def throughput(
    d: Deployment, s: BenchSettings, runs: int, ready_timeout: float, bench_timeout: float
) -> dict[str, Any]:
    """Our launch against the by-hand processes, counterbalanced; every run follows a fresh start of
    its arm (the first too: not the units site.yml left, warm from its gate); leaves the units stopped."""
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    sh(d.hv, d.head, f"mkdir -p {REMOTE_DIR}")
    arms: dict[str, list[dict[str, Any]]] = {"ours": [], "hand": []}
    starts: dict[str, list[float]] = {"ours": [], "hand": []}
    state, pid = "ours", ""  # the units site.yml left run
    try:
        for arm, i in alternation(runs):
            if state == "hand":
                stop_by_hand(d, pid)
            else:
                stop_units(d)
            state = "stopped"
            if arm == "hand":
                secs, pid = start_by_hand(d, ready_timeout)
                starts["hand"].append(round(secs, 2))
            else:
                starts["ours"].append(round(start_units(d, ready_timeout), 2))
            state = arm
            wait_chat(d.endpoint, ready_timeout, f"the {arm} launch")
            r = bench_once(d, s, f"overhead-{stamp}-{arm}{i}.json", bench_timeout)
            arms[arm].append(r)
            print(
                f"[throughput] {arm} {i}: {r['output_throughput']:.1f} output tok/s, "
                f"{r['completed']}/{r.get('num_prompts', '?')} ok",
                file=sys.stderr,
            )
    finally:
        # neither launch outlives the benchmark, even when a run failed or was interrupted
        if state != "ours":
            stop_by_hand(d, pid if state == "hand" else "")
        if state != "hand":
            stop_units(d)
    out = throughput_summary(arms["ours"], arms["hand"])
    vllm_argv = d.vllm_cmd[0]
    out.update(
        settings={**vars(s), "runs": runs},
        node=d.head,
        order=[f"{arm}{i}" for arm, i in alternation(runs)],
        serve_argv=vllm_argv,
        hand_start_s=starts["hand"],
        ours_restart_s=starts["ours"],
    )
    for arm in ("ours", "hand"):
        if out[arm]["failed_requests"]:
            print(f"overhead: {out[arm]['failed_requests']} requests failed in the {arm} arm", file=sys.stderr)
    return out


def scale_compare(
    nodes: int, name: str, keep: bool, extra_vars: Mapping[str, Any], up_quiet: bool = True
) -> dict[str, Any]:
    """A bed of ``nodes`` nodes: up, one converge from bare nodes, then converge() timed, down."""
    from multinode_vllm import testbed as tb  # noqa: PLC0415
    from multinode_vllm.testbed.tinymodel import DEFAULT_NAME, make_tiny_llama  # noqa: PLC0415

    doc: dict[str, Any] = {"nodes": nodes, "bed": name, "extra_vars": dict(extra_vars)}
    tb.down(name, quiet=up_quiet)  # from bare nodes, even after an interrupted run
    t = time.monotonic()
    bed = tb.up(tb.TestbedSpec(name=name, nodes=nodes, layout="bond0", local_inventory=False), quiet=up_quiet)
    try:
        make_tiny_llama(Path(bed.shared_dir) / "models" / DEFAULT_NAME, quiet=True)
        doc["bed_up_s"] = round(time.monotonic() - t, 2)
        secs, doc["bare_run"] = timed_run(bed.inventory, "site.yml", extra_vars)
        doc["bare_s"] = round(secs, 2)
        doc.update(converge(bed.inventory, extra_vars))
        timed_run(bed.inventory, "playbooks/teardown.yml", extra_vars)
    finally:
        if not keep:
            tb.down(name, quiet=up_quiet)
    return doc


# ------------------------------------------------------------------------ the command
def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE")
    return key, yaml.safe_load(value)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a positive number")
    return n


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--inventory", default=str(PROJECT_DIR / "inventories" / "local"))
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="default %(default)s")
    p.add_argument("--skip-hand", action="store_true", help="no by-hand start (without --throughput)")
    p.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="rounds of first run, rerun and by hand, alternated; the medians are reported (default %(default)s)",
    )
    p.add_argument(
        "--no-converge",
        action="store_true",
        help="no 2-node converge timings: --throughput against the bed as it is, left serving",
    )
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for a chat completion")
    t = p.add_argument_group("served throughput")
    t.add_argument("--throughput", action="store_true", help="our launch against by hand, alternated")
    t.add_argument("--throughput-runs", type=_positive, default=3, help="runs per arm (default %(default)s)")
    t.add_argument("--num-prompts", type=_positive, default=200, help="requests per run (default %(default)s)")
    t.add_argument("--input-len", type=_positive, help="default: the inventory's vllm_bench_input_len")
    t.add_argument("--output-len", type=_positive, help="default: the inventory's vllm_bench_output_len")
    t.add_argument("--max-concurrency", type=_positive, help="default: the inventory's vllm_bench_max_concurrency")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bench-timeout", type=float, default=1800, help="seconds for one vllm bench serve")
    n = p.add_argument_group("node count")
    n.add_argument("--nodes-compare", type=_positive, metavar="N", help="also time a test bed of N nodes")
    n.add_argument("--nodes-name", default="mnv-scale", help="its name (default %(default)s)")
    n.add_argument("--nodes-keep", action="store_true", help="leave the N-node bed up")
    n.add_argument(
        "--nodes-var",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra variable for the N-node runs (YAML value), repeatable",
    )
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="redraw the chart and table of a results JSON; run nothing"
    )
    return p.parse_args(argv)


def emit(doc: dict[str, Any], results_dir: Path, stamp: str) -> int:
    summary = summarize(doc)
    out, png, md = write_outputs(doc, results_dir, stamp)
    print(json.dumps(summary, indent=2))
    print()
    print(markdown_table(doc), flush=True)
    print(f"written: {out}\n         {png}\n         {md}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        return emit(saved, args.report.parent, args.report.stem.removeprefix("overhead-"))
    if args.no_converge and not (args.throughput or args.nodes_compare):
        print("overhead: --no-converge leaves nothing to measure: add --throughput or --nodes-compare", file=sys.stderr)
        return 2
    if args.throughput and (args.throughput_runs < 3 or args.num_prompts < 200):
        print("overhead: fewer than 3 runs of 200 requests cannot tell 5 % apart", file=sys.stderr)
    doc: dict[str, Any] = {"inventory": args.inventory, "date": datetime.now(UTC).isoformat()}
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    try:
        measure(args, doc)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        # what was measured before the failure is kept, marked with the error
        doc["error"] = str(exc) or type(exc).__name__
        args.results_dir.mkdir(parents=True, exist_ok=True)
        partial = args.results_dir / f"overhead-{stamp}.json"
        partial.write_text(json.dumps(doc, indent=2))
        print(f"overhead: stopped; what was measured is in {partial}", file=sys.stderr)
        raise
    return emit(doc, args.results_dir, stamp)


def measure(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """Every part the flags ask for, in order, into doc."""
    if not args.no_converge:
        rounds = []
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"overhead: round {i + 1} of {args.repeat}", file=sys.stderr)
            r = converge(args.inventory)
            # --throughput times its own by-hand start after the last round
            if not args.skip_hand and (i < args.repeat - 1 or not args.throughput):
                r["by_hand_s"] = round(by_hand(args.inventory, args.ready_timeout), 2)
            rounds.append(r)
        doc.update(rounds[-1])  # the last round's runs, changed and task counts
        if args.repeat > 1:
            doc.update(median_rounds(rounds))
    if args.throughput:
        d = read_deployment(args.inventory)
        s = bench_settings(args, d.hv)
        doc["throughput"] = throughput(d, s, args.throughput_runs, args.ready_timeout, args.bench_timeout)
        doc.setdefault("by_hand_s", doc["throughput"]["hand_start_s"][0])
        if args.no_converge:  # leave the bed as found: serving through its units
            start_units(d, args.ready_timeout)
    if not args.no_converge:
        timed_run(args.inventory, "playbooks/teardown.yml")
    if args.nodes_compare:
        doc["scale"] = scale_compare(
            args.nodes_compare, args.nodes_name, args.nodes_keep, {**SCALE_VARS, **dict(args.nodes_var)}
        )


if __name__ == "__main__":
    sys.exit(main())
