"""`multinode-vllm bench`: run the bench phase, summarise and plot the fetched results, load-test.

The bench phase (playbooks/bench.yml, role vllm_bench) runs `vllm bench serve` on the head and
fetches its result JSON to the controller. This command runs that phase through the runner API,
prints the TTFT/TPOT/ITL/E2E percentiles and the throughput, and draws the latency distributions
to a PNG. ``--streams N`` adds the streaming load check of the Dynamo guide: N concurrent
streaming chat requests, counting errors and tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from multinode_vllm import PROJECT_DIR
from multinode_vllm.module_utils._credentials import read_api_key
from multinode_vllm.module_utils._metrics import kv_cache_usage, load_summary
from multinode_vllm.progress import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_run_arguments,
    error_document,
    execute,
    options_from_args,
)

#: Where the bench role fetches results on the controller (vllm_bench_controller_dir).
RESULTS_DIR = PROJECT_DIR / "benchmarks" / "results"
METRICS = ("ttft", "tpot", "itl", "e2el")
_METRIC_KEY = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el)_ms$")


# ------------------------------------------------------------------------------ the endpoint
@dataclass(frozen=True)
class Endpoint:
    base_url: str  # http://HOST:PORT (no /v1)
    api_key: str | None = None
    model: str | None = None


def inventory_vars(
    inventory: str | Path, host: str | None = None, vault_password_file: str | None = None
) -> dict[str, Any]:
    """`ansible-inventory --list` (or one host's vars) as a dict, with the repo's ansible.cfg.

    A vaulted file in the inventory needs the vault password file (the vault strings stay encrypted
    in the listing); without it, UsageError says what to give.
    """
    exe = Path(sys.executable).parent / "ansible-inventory"
    cmd = [str(exe if exe.exists() else "ansible-inventory"), "-i", str(inventory)]
    cmd += ["--host", host] if host else ["--list"]
    if vault_password_file:
        cmd += ["--vault-password-file", str(vault_password_file)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg")}
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, check=False
    )
    if out.returncode != 0:
        err = " ".join(out.stderr.split())[-400:]
        hint = (
            " Fix: give --vault-password-file FILE."
            if not vault_password_file and re.search(r"vault", out.stderr, re.I)
            else ""
        )
        raise UsageError(f"ansible-inventory -i {inventory} failed: {err}.{hint}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def head_host(listing: Mapping[str, Any]) -> str:
    """The head: first host of group ray_head."""
    hosts = (listing.get("ray_head") or {}).get("hosts") or []
    if not hosts:
        raise UsageError("the inventory has no host in group ray_head")
    return str(hosts[0])


def endpoint_via_mgmt(endpoint_url: str | None, mgmt_ip: str, default_port: int = 8000) -> str:
    """The endpoint's port on the head's management address (what the controller can reach)."""
    port = default_port
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        port = parts.port or default_port
    return f"http://{mgmt_ip}:{port}"


def _request(url: str, api_key: str | None, body: Mapping[str, Any] | None = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def served_model(ep: Endpoint, timeout: float = 30) -> str:
    """The first model /v1/models lists."""
    data = _request(f"{ep.base_url}/v1/models", ep.api_key, timeout=timeout)
    return str(data["data"][0]["id"])


def chat_once(ep: Endpoint, prompt: str, max_tokens: int = 32, timeout: float = 120) -> str:
    """One chat completion; the answer's text."""
    model = ep.model or served_model(ep)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    data = _request(f"{ep.base_url}/v1/chat/completions", ep.api_key, body, timeout=timeout)
    return str(data["choices"][0]["message"]["content"])


# ------------------------------------------------------------------------- streaming load
@dataclass
class StreamStats:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    tokens: int = 0  # completion tokens reported by usage (or content chunks when absent)
    chunks: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        ttft = sorted(self.ttft_ms)
        d["ttft_ms"] = {
            "p50": round(ttft[len(ttft) // 2], 1) if ttft else None,
            "max": round(ttft[-1], 1) if ttft else None,
        }
        d["tokens_per_s"] = round(self.tokens / self.wall_s, 1) if self.wall_s else 0.0
        return d


async def _read_chunked_or_plain(reader: asyncio.StreamReader, chunked: bool) -> Any:
    """Yield body bytes, decoding HTTP/1.1 chunked transfer encoding when used."""
    if not chunked:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readline()  # CRLF after each chunk
        yield data


async def stream_chat(
    ep: Endpoint, model: str, prompt: str, *, max_tokens: int, stats: StreamStats, timeout: float
) -> None:
    """One streaming chat completion over a raw asyncio connection (stdlib only)."""
    parts = urlsplit(ep.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
        }
    ).encode()
    headers = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if ep.api_key:
        headers.append(f"Authorization: Bearer {ep.api_key}")
    stats.requests += 1
    t0 = time.monotonic()
    first = True
    usage_tokens: int | None = None
    content_chunks = 0
    done = False

    async def go() -> None:
        nonlocal first, usage_tokens, content_chunks, done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status = await reader.readline()
            code = int(status.split()[1]) if len(status.split()) > 1 else 0
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                    chunked = True
            if code != 200:
                raw = b"".join([c async for c in _read_chunked_or_plain(reader, chunked)])
                raise RuntimeError(f"HTTP {code}: {raw[:200].decode(errors='replace')}")
            buf = b""
            async for data in _read_chunked_or_plain(reader, chunked):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    event = json.loads(payload)
                    if event.get("error"):
                        raise RuntimeError(str(event["error"])[:200])
                    if event.get("usage"):
                        usage_tokens = int(event["usage"].get("completion_tokens") or 0)
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            if first:
                                stats.ttft_ms.append((time.monotonic() - t0) * 1000)
                                first = False
                            content_chunks += 1
        finally:
            writer.close()

    try:
        await asyncio.wait_for(go(), timeout)
        if not done:
            raise RuntimeError("stream ended without [DONE]")
    except Exception as exc:  # every failure of one stream is counted, none stops the others
        stats.errors += 1
        if len(stats.error_samples) < 5:
            stats.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
        return
    stats.ok += 1
    stats.chunks += content_chunks
    stats.tokens += usage_tokens if usage_tokens is not None else content_chunks


async def stream_load(
    ep: Endpoint,
    n: int = 100,
    max_tokens: int = 64,
    prompt: str = "write a very long and boring bedtime story about an unicorn that rhymes",
    timeout: float = 300,
) -> StreamStats:
    """N concurrent streaming chat requests (the Dynamo guide's `seq 1 100 | xargs -P100 curl`)."""
    model = ep.model if ep.model else await asyncio.to_thread(served_model, ep)
    stats = StreamStats()
    t0 = time.monotonic()
    await asyncio.gather(
        *(stream_chat(ep, model, prompt, max_tokens=max_tokens, stats=stats, timeout=timeout) for _ in range(n))
    )
    stats.wall_s = time.monotonic() - t0
    return stats


def read_metrics(ep: Endpoint, timeout: float = 10) -> str:
    """The endpoint's Prometheus text (/metrics on the API port: vLLM's engines, or Dynamo's frontend)."""
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    req = urllib.request.Request(f"{ep.base_url}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return str(resp.read().decode("utf-8", errors="replace"))


async def stream_load_with_metrics(
    ep: Endpoint, n: int = 100, max_tokens: int = 64, sample_every: float = 1.0
) -> tuple[StreamStats, dict[str, Any]]:
    """stream_load, with the server's view of it: /metrics read before and after the load, and the
    KV-cache usage sampled while it runs (its peak). The second item is load_summary's record, or
    {"error": why} when the endpoint has no readable /metrics (the load itself still counts)."""
    try:
        before = await asyncio.to_thread(read_metrics, ep)
    except (OSError, ValueError) as exc:
        return await stream_load(ep, n=n, max_tokens=max_tokens), {"error": f"/metrics before the load: {exc}"}
    peak: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            try:
                usage = kv_cache_usage(await asyncio.to_thread(read_metrics, ep, 5))
                if usage is not None:
                    peak.append(usage)
            except (OSError, ValueError):
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), sample_every)

    sampler = asyncio.create_task(sample())
    try:
        stats = await stream_load(ep, n=n, max_tokens=max_tokens)
    finally:
        done.set()
        await sampler
    try:
        after = await asyncio.to_thread(read_metrics, ep)
        metrics = load_summary(before, after, max(stats.wall_s, 1e-3), max(peak) if peak else None)
    except (OSError, ValueError) as exc:
        metrics = {"error": f"/metrics after the load: {exc}"}
    return stats, metrics


# ------------------------------------------------------------------- results: table and plot
def percentiles(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{metric: {stat: ms}} from a `vllm bench serve` result JSON (mean/median/std/pNN)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in result.items():
        m = _METRIC_KEY.match(key)
        if m and isinstance(value, int | float):
            out.setdefault(m.group(2), {})[m.group(1)] = float(value)
    return {k: out[k] for k in METRICS if k in out}


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a user reads: counts, throughput, latency percentiles."""
    keys = (
        "num_prompts",
        "completed",
        "failed",
        "max_concurrency",
        "duration",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
    )
    out: dict[str, Any] = {k: result[k] for k in keys if k in result}
    if "failed" not in out and "num_prompts" in result and "completed" in result:
        out["failed"] = int(result["num_prompts"]) - int(result["completed"])
    out["latency_ms"] = percentiles(result)
    return out


def format_summary(s: Mapping[str, Any]) -> str:
    lines = [
        f"requests: {s.get('completed', '?')}/{s.get('num_prompts', '?')} ok, "
        f"{s.get('failed', '?')} failed, concurrency {s.get('max_concurrency', '?')}, "
        f"{float(s.get('duration', 0)):.1f}s",
        f"throughput: {float(s.get('request_throughput', 0)):.2f} req/s, "
        f"{float(s.get('output_throughput', 0)):.1f} output tok/s, "
        f"{float(s.get('total_token_throughput', 0)):.1f} total tok/s",
    ]
    lat = s.get("latency_ms") or {}
    if lat:
        stats = sorted({k for v in lat.values() for k in v}, key=_stat_order)
        lines.append(f"{'ms':<6}" + "".join(f"{st:>10}" for st in stats))
        for metric, vals in lat.items():
            cells = "".join(f"{vals[st]:>10.2f}" if st in vals else f"{'':>10}" for st in stats)
            lines.append(f"{metric.upper():<6}{cells}")
    return "\n".join(lines)


def _stat_order(stat: str) -> tuple[int, float]:
    if stat in ("mean", "median", "std"):
        return (("mean", "median", "std").index(stat), 0.0)
    return (3, float(stat[1:]))


def distributions(result: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-request latencies in ms: TTFT, TPOT (mean ITL of a request), ITL (every gap), E2E."""
    ttfts = [float(x) for x in result.get("ttfts") or []]
    itls = [[float(y) for y in x] for x in result.get("itls") or []]
    out: dict[str, list[float]] = {"ttft": [t * 1000 for t in ttfts if t > 0]}
    out["tpot"] = [sum(req) / len(req) * 1000 for req in itls if req]
    out["itl"] = [g * 1000 for req in itls for g in req]
    if result.get("latencies"):
        out["e2el"] = [float(x) * 1000 for x in result["latencies"] if x and float(x) > 0]
    elif ttfts and len(ttfts) == len(itls):
        # a request's end-to-end latency is its first token plus every later gap
        out["e2el"] = [(t + sum(g)) * 1000 for t, g in zip(ttfts, itls, strict=True) if t > 0]
    return {k: v for k, v in out.items() if v}


def plot(result: Mapping[str, Any], png: Path, title: str = "") -> Path:
    """Histograms of the four latency distributions, p50/p99 marked, saved as PNG (Agg)."""
    # matplotlib is optional (the `dev` extra): only plotting needs it
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    dists = distributions(result)
    if not dists:
        raise UsageError("the result JSON holds no per-request latencies (ttfts/itls)")
    names = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}
    fig, axes = plt.subplots(1, len(dists), figsize=(4.2 * len(dists), 3.6), squeeze=False)
    for ax, (metric, values) in zip(axes[0], dists.items(), strict=True):
        ordered = sorted(values)
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        # a few long stalls would squash the histogram: draw up to p99.5 and count the rest
        top = ordered[min(len(ordered) - 1, round(0.995 * (len(ordered) - 1)))]
        shown = [v for v in values if v <= top]
        ax.hist(shown, bins=min(40, max(5, len(shown) // 3)), color="#4C72B0", alpha=0.85)
        ax.axvline(p50, color="#DD8452", linestyle="--", label=f"p50 {p50:.1f}")
        ax.axvline(p99, color="#C44E52", linestyle=":", label=f"p99 {p99:.1f}")
        hidden = len(values) - len(shown)
        more = f", {hidden} > {top:.0f} ms not drawn" if hidden else ""
        ax.set_title(f"{names[metric]} (n={len(values)}{more})", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    tput = result.get("output_throughput")
    suptitle = title or str(result.get("model_id") or "vllm bench serve")
    if tput:
        suptitle += f" — {float(tput):.0f} output tok/s, concurrency {result.get('max_concurrency')}"
    fig.suptitle(suptitle)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def latest_result(directory: Path) -> Path | None:
    files = [p for p in directory.rglob("*.json") if p.is_file() and not p.name.endswith(".summary.json")]
    files = [p for p in files if _looks_like_bench(p)]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


def _looks_like_bench(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "ttfts" in data and "completed" in data


def report(result_json: Path, json_out: bool, png: Path | None = None) -> dict[str, Any]:
    data = json.loads(result_json.read_text())
    s = summary(data)
    png = png or result_json.with_suffix(".png")
    plot(data, png)
    s["result_json"] = str(result_json)
    s["plot"] = str(png)
    if not json_out:
        print(format_summary(s))
        print(f"results: {result_json}")
        print(f"plot:    {png}")
    return s


# ------------------------------------------------------------------------- a load sweep
def sweep_points(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per load point, by max concurrency: throughput, TTFT and ITL (median, p99, ms)."""
    rows = []
    for r in results:
        lat = percentiles(r)
        rows.append(
            {
                "max_concurrency": r.get("max_concurrency"),
                "completed": r.get("completed"),
                "failed": int(r.get("num_prompts", 0) or 0) - int(r.get("completed", 0) or 0),
                "request_throughput": float(r.get("request_throughput") or 0),
                "output_throughput": float(r.get("output_throughput") or 0),
                "ttft_ms": {k: lat.get("ttft", {}).get(k) for k in ("median", "p99")},
                "itl_ms": {k: lat.get("itl", {}).get(k) for k in ("median", "p99")},
            }
        )
    return sorted(rows, key=lambda row: int(row["max_concurrency"] or 0))


def format_sweep(rows: Sequence[Mapping[str, Any]]) -> str:
    head = f"{'concurrency':>11}  {'req/s':>7}  {'out tok/s':>9}  {'TTFT p50/p99 ms':>17}  {'ITL p50/p99 ms':>16}"

    def pair(d: Mapping[str, Any]) -> str:
        return "/".join("-" if d.get(k) is None else f"{float(d[k]):.0f}" for k in ("median", "p99"))

    lines = [head] + [
        f"{row['max_concurrency']!s:>11}  {row['request_throughput']:>7.2f}  {row['output_throughput']:>9.1f}  "
        f"{pair(row['ttft_ms']):>17}  {pair(row['itl_ms']):>16}"
        for row in rows
    ]
    return "\n".join(lines)


def plot_sweep(rows: Sequence[Mapping[str, Any]], png: Path, title: str = "") -> Path:
    """Output tok/s against TTFT and ITL (median and p99), one point per load, labelled by concurrency."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if not rows:
        raise UsageError("a sweep needs at least one result")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    x = [row["output_throughput"] for row in rows]
    for ax, (metric, name) in zip(axes[0], (("ttft_ms", "TTFT"), ("itl_ms", "ITL")), strict=True):
        for stat, style in (("median", "o-"), ("p99", "s--")):
            pts = [(xi, row[metric][stat]) for xi, row in zip(x, rows, strict=True) if row[metric][stat] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{name} {stat}")
        for xi, row in zip(x, rows, strict=True):
            if row[metric]["median"] is not None:
                ax.annotate(f"c={row['max_concurrency']}", (xi, row[metric]["median"]), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name} against throughput", fontsize=10)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name} percentiles in the results", ha="center", transform=ax.transAxes)
    fig.suptitle(title or "vllm bench serve: load sweep")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def sweep_report(files: Sequence[Path], json_out: bool, png: Path | None = None) -> dict[str, Any]:
    rows = sweep_points([json.loads(Path(f).read_text()) for f in files])
    png = png or Path(files[-1]).with_name(Path(files[-1]).stem + "-sweep.png")
    plot_sweep(rows, png)
    doc = {"points": rows, "result_files": [str(f) for f in files], "plot": str(png)}
    if not json_out:
        print(format_sweep(rows))
        print(f"plot:    {png}")
    return doc


def format_load(load: Mapping[str, Any]) -> str:
    """One line: what the server's /metrics say about the streams."""
    if "error" in load:
        return f"server metrics: not read ({load['error']})"

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * float(v):.1f} %"

    return (
        f"server metrics ({load['source']}): {load['requests']} requests finished, KV-cache usage "
        f"{pct(load['kv_cache_usage'])} after the load (peak {pct(load['kv_cache_usage_peak'])}), "
        f"prefix-cache hit rate {pct(load['prefix_cache_hit_rate'])}, {load['output_tokens_per_s']} output tok/s"
    )


def concurrency_list(text: str) -> list[int]:
    """--concurrency 1,4,16: positive integers, in the order given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 1,4,16")
    return values


# ------------------------------------------------------------------------------ the command
def _endpoint_from_inventory(
    inventory: str | Path, endpoint_url: str | None, vault_password_file: str | None = None
) -> Endpoint:
    listing = inventory_vars(inventory, vault_password_file=vault_password_file)
    head = head_host(listing)
    hv = (listing.get("_meta") or {}).get("hostvars", {}).get(head) or inventory_vars(
        inventory, head, vault_password_file
    )
    mgmt = str(hv.get("ansible_host") or head)
    port = int(hv.get("multinode_vllm_port") or hv.get("vllm_serve_port") or 8000)
    key = api_key_for(inventory, hv, head=head, vault_password_file=vault_password_file)
    return Endpoint(base_url=endpoint_via_mgmt(endpoint_url, mgmt, port), api_key=key)


def _needs_ansible(value: Any) -> bool:
    """A value ansible-inventory leaves unresolved: a template, or an inline !vault string."""
    return (isinstance(value, dict) and "__ansible_vault" in value) or "{{" in str(value)


def resolve_with_ansible(
    inventory: str | Path, host: str, var: str, vault_password_file: str | None = None, timeout: float = 120
) -> str:
    """The value of `var` for `host` as a play would see it: templated, the vault decrypted.

    One `ansible HOST -m debug` on the controller (the debug action never connects to the host); its
    JSON goes through a pipe to this process, never to a terminal or a log file.
    """
    exe = Path(sys.executable).parent / "ansible"
    cmd = [str(exe if exe.exists() else "ansible"), host, "-i", str(inventory)]
    cmd += ["-m", "ansible.builtin.debug", "-a", f"msg={{{{ {var} }}}}"]
    if vault_password_file:
        cmd += ["--vault-password-file", str(vault_password_file)]
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_LOG_PATH"}
    env.update(
        ANSIBLE_CONFIG=str(PROJECT_DIR / "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    result: dict[str, Any] = {}
    try:
        plays = json.loads(proc.stdout).get("plays") or [{}]
        result = ((plays[0].get("tasks") or [{}])[0].get("hosts") or {}).get(host) or {}
    except (ValueError, AttributeError, IndexError):
        result = {}
    value = result.get("msg")
    if proc.returncode != 0 or result.get("failed") or not isinstance(value, str):
        why = str(result.get("msg") or "") if result.get("failed") else ""
        why = why or next((ln for ln in proc.stderr.splitlines() if "ERROR" in ln), "") or proc.stderr.strip()[-300:]
        hint = "" if vault_password_file else "give --vault-password-file FILE, or "
        raise UsageError(
            f"{var} of {host} could not be read through Ansible ({why.strip() or 'no answer'}): "
            f"{hint}export MULTINODE_API_KEY with the key, then run it again"
        )
    return value


def api_key_for(
    inventory: str | Path,
    hv: Mapping[str, Any],
    *,
    head: str | None = None,
    vault_password_file: str | None = None,
) -> str | None:
    """The key the endpoint wants, from the source the serve phase uses (multinode.vllm.api_key).

    MULTINODE_API_KEY wins; then multinode_api_key as the inventory writes it, a template or a
    vault string resolved through Ansible for `head` (with the vault password file given); then the
    key generated into the credentials dir (multinode_credentials_dir, default <inventory
    dir>/.credentials); None when the API is open.
    """
    if os.environ.get("MULTINODE_API_KEY"):
        return os.environ["MULTINODE_API_KEY"]
    if str(hv.get("multinode_api_open", "")).lower() in ("true", "yes", "on", "1"):
        return None
    var = "multinode_api_key" if hv.get("multinode_api_key") else "vllm_bench_api_key"
    given = hv.get(var)
    if given and not _needs_ansible(given):
        return str(given)
    if given:
        if head is None:
            raise UsageError(f"{var} is a template or a vault string: export MULTINODE_API_KEY with the key")
        resolved = resolve_with_ansible(inventory, head, var, vault_password_file)
        if resolved:
            return resolved
    inv = Path(inventory)
    configured = str(hv.get("multinode_credentials_dir") or "")
    if configured and "{{" not in configured:
        creds = Path(configured)
    else:
        creds = (inv if inv.is_dir() else inv.parent) / ".credentials"
    try:
        return read_api_key(str(creds))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _cmd(args: argparse.Namespace) -> int:
    json_out = bool(args.json)
    doc: dict[str, Any] = {}
    try:
        if args.result:
            result_json = Path(args.result)
            if not result_json.is_file():
                raise UsageError(f"--result {result_json}: no such file")
        elif args.streams_only:
            result_json = None
        else:
            out_dir = Path(args.results_dir).resolve()
            extra: dict[str, Any] = {"vllm_bench_controller_dir": str(out_dir)}
            if args.concurrency:
                extra["vllm_bench_concurrencies"] = args.concurrency
            options = options_from_args(args, playbook="playbooks/bench.yml", extra=extra)
            t0 = time.time()
            code, res, err = execute(options, json_out=json_out, emit_json=False)
            if res is not None:
                doc["run"] = res.to_dict()
            if err is not None:
                if json_out:
                    print(json.dumps({**doc, **error_document(err)}, indent=2, default=str))
                return code
            exported = res.exported.get("vllm_bench_result_file") if res is not None else None
            found = Path(exported) if exported else latest_result(out_dir)
            if found is None or not found.is_file() or found.stat().st_mtime < t0 - 1:
                print(f"bench: no new result JSON under {out_dir}", file=sys.stderr)
                return EXIT_FAILED
            result_json = found
            swept = res.exported.get("vllm_bench_result_files") if res is not None else None
            if args.concurrency and swept:
                doc["sweep"] = sweep_report([Path(f) for f in swept], json_out)
        if result_json is not None:
            doc["bench"] = report(result_json, json_out, Path(args.plot) if args.plot else None)
        if args.streams:
            inv = args.inventory or str(PROJECT_DIR / "inventories" / "local")
            ep = _endpoint_from_inventory(inv, None, getattr(args, "vault_password_file", None))
            st, load = asyncio.run(stream_load_with_metrics(ep, n=args.streams, max_tokens=args.stream_tokens))
            doc["streams"] = {**st.summary(), "metrics": load}
            if not json_out:
                s = doc["streams"]
                print(
                    f"streams: {s['ok']}/{s['requests']} ok, {s['errors']} errors, {s['tokens']} tokens "
                    f"in {s['wall_s']:.1f}s ({s['tokens_per_s']} tok/s), TTFT p50 {s['ttft_ms']['p50']} ms"
                )
                print(format_load(load))
                for e in st.error_samples:
                    print(f"  error: {e}", file=sys.stderr)
            if st.errors:
                if json_out:
                    print(json.dumps(doc, indent=2))
                return EXIT_FAILED
    except UsageError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (urllib.error.URLError, OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: cannot reach the endpoint: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if json_out:
        print(json.dumps(doc, indent=2))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark the endpoint (vllm bench serve on the head), print percentiles, plot them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p, tags=False)
    p.add_argument("--results-dir", default=str(RESULTS_DIR), help="where results are fetched (default %(default)s)")
    p.add_argument("--result", help="summarise and plot this result JSON; run nothing")
    p.add_argument("--plot", help="PNG path (default: beside the result JSON)")
    p.add_argument(
        "--concurrency",
        type=concurrency_list,
        help="a load sweep: one run per max concurrency (e.g. 1,4,16), plotted as throughput against TTFT and ITL",
    )
    p.add_argument("--streams", type=int, default=0, help="also send N concurrent streaming requests")
    p.add_argument("--stream-tokens", type=int, default=64, help="max_tokens of each streaming request")
    p.add_argument("--streams-only", action="store_true", help="only the streaming load check")
    p.set_defaults(func=_cmd)


__all__ = [
    "Endpoint",
    "chat_once",
    "distributions",
    "percentiles",
    "plot",
    "plot_sweep",
    "register",
    "stream_load",
    "sweep_points",
]
