# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's /metrics (the Prometheus text format) per engine, with prometheus_client's parser.

vLLM labels every engine's series with ``engine`` (its data-parallel rank): with
``--data-parallel-size D`` the head's /metrics carries D of each. ``engine_metrics`` folds them into
one record per engine; ``engine_check`` says which expected engines are missing or served nothing.
"""

from __future__ import annotations

from typing import Any

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # checked where it is used: the message names the package
    text_string_to_metric_families = None  # type: ignore[assignment]

#: Sample name -> the record's field, summed over the engine's other labels (finished_reason ...).
FIELDS = {
    "vllm:request_success_total": "success",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
}


def _families(text: str, what: str = "/metrics") -> list[Any]:
    """The metric families of a Prometheus text body (``what`` names the body in the messages)."""
    if text_string_to_metric_families is None:
        raise ValueError(
            f"reading {what} needs the Python package prometheus-client on the controller "
            "(pip install prometheus-client; the collection's venv has it)"
        )
    if not isinstance(text, str):
        raise ValueError(f"{what} body must be text, got {type(text).__name__}")
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ValueError(f"{what} is not the Prometheus text format: {exc}") from exc


def engine_metrics(text: str) -> dict[str, dict[str, float]]:
    """Engine label -> {success, running, waiting, kv_cache_usage, ...} from a /metrics body."""
    families = _families(text, "vLLM's /metrics")
    engines: dict[str, dict[str, float]] = {}
    for family in families:
        for sample in family.samples:
            field = FIELDS.get(sample.name)
            engine = sample.labels.get("engine")
            if field is None or engine is None:
                continue
            record = engines.setdefault(str(engine), {})
            record[field] = record.get(field, 0.0) + float(sample.value)
    return dict(sorted(engines.items(), key=lambda kv: (len(kv[0]), kv[0])))


def engine_check(text: str, expected: int, before: str | None = None) -> dict[str, Any]:
    """Every engine 0..expected-1 present and with a finished request: {engines, missing, idle, problem}.

    With ``before`` (the /metrics body read before the requests were sent), an engine must have
    finished a request *since* then: counters that only grew in an earlier run do not count.
    """
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
        raise ValueError(f"expected must be the number of engines (1 or more), got {expected!r}")
    engines = engine_metrics(text)
    base = engine_metrics(before) if before is not None else {}
    for e, rec in engines.items():
        rec["success_new"] = rec.get("success", 0.0) - base.get(e, {}).get("success", 0.0)
    want = [str(i) for i in range(expected)]
    missing = [e for e in want if e not in engines]
    idle = [e for e in want if e in engines and engines[e]["success_new"] <= 0]
    problems = []
    if missing:
        found = ", ".join(engines) or "none"
        problems.append(f"no metrics from engine {', '.join(missing)} of {expected} (found: {found})")
    if idle:
        counts = ", ".join(f"engine {e}: {int(engines[e]['success_new'])}" for e in engines)
        since = " since the requests were sent" if before is not None else ""
        problems.append(f"engine {', '.join(idle)} finished no request{since} ({counts})")
    return {"engines": engines, "missing": missing, "idle": idle, "problem": "; ".join(problems)}


def _rate(new: float, old: float, seconds: float) -> float:
    return round(max(new - old, 0.0) / seconds, 2) if seconds > 0 else 0.0


def metrics_summary(first: str, second: str, seconds: float) -> dict[str, Any]:
    """What `status` shows per engine from two /metrics reads ``seconds`` apart.

    Per engine: requests running and waiting, KV-cache usage (0..1), prefix-cache hit rate (hits /
    queries since start, None before any query), finished requests, and generation tokens/s over
    the window; ``total``: the sums (KV usage and hit rate averaged over the engines that have them).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"seconds must be the positive time between the two reads, got {seconds!r}")
    old, new = engine_metrics(first), engine_metrics(second)
    engines: dict[str, dict[str, Any]] = {}
    for e, rec in new.items():
        before = old.get(e, {})
        queries = rec.get("prefix_cache_queries", 0.0)
        engines[e] = {
            "running": int(rec.get("running", 0.0)),
            "waiting": int(rec.get("waiting", 0.0)),
            "kv_cache_usage": round(rec.get("kv_cache_usage", 0.0), 4),
            "prefix_cache_hit_rate": round(rec.get("prefix_cache_hits", 0.0) / queries, 4) if queries else None,
            "finished_requests": int(rec.get("success", 0.0)),
            "generation_tokens_per_s": _rate(
                rec.get("generation_tokens", 0.0), before.get("generation_tokens", 0.0), seconds
            ),
        }
    rates = [r["prefix_cache_hit_rate"] for r in engines.values() if r["prefix_cache_hit_rate"] is not None]
    total = {
        "engines": len(engines),
        "running": sum(r["running"] for r in engines.values()),
        "waiting": sum(r["waiting"] for r in engines.values()),
        "kv_cache_usage": round(sum(r["kv_cache_usage"] for r in engines.values()) / len(engines), 4)
        if engines
        else 0.0,
        "prefix_cache_hit_rate": round(sum(rates) / len(rates), 4) if rates else None,
        "generation_tokens_per_s": round(sum(r["generation_tokens_per_s"] for r in engines.values()), 2),
    }
    return {"window_s": round(float(seconds), 2), "engines": engines, "total": total}


#: Dynamo's frontend (its /metrics on the API port, prefix dynamo_frontend_): sample -> field, summed
#: over the labels (model, worker, status ...). Histograms give _sum and _count.
DYNAMO_FIELDS = {
    "dynamo_frontend_requests_total": "requests",
    "dynamo_frontend_inflight_requests": "inflight",
    "dynamo_frontend_worker_active_decode_blocks": "active_kv_blocks",
    "dynamo_frontend_model_total_kv_blocks": "total_kv_blocks",
    "dynamo_frontend_cached_tokens_sum": "cached_tokens",
    "dynamo_frontend_input_sequence_tokens_sum": "input_tokens",
    "dynamo_frontend_output_tokens_total": "output_tokens",
}


def dynamo_frontend_metrics(text: str) -> dict[str, float]:
    """Dynamo's frontend counters and gauges from a /metrics body, each summed over its labels."""
    out: dict[str, float] = {}
    for family in _families(text, "Dynamo's /metrics"):
        for sample in family.samples:
            field = DYNAMO_FIELDS.get(sample.name)
            if field is not None:
                out[field] = out.get(field, 0.0) + float(sample.value)
    return out


def _engines_kv_usage(engines: dict[str, dict[str, float]]) -> float | None:
    usage = [rec["kv_cache_usage"] for rec in engines.values() if "kv_cache_usage" in rec]
    return round(sum(usage) / len(usage), 4) if usage else None


def kv_cache_usage(text: str) -> float | None:
    """The KV-cache usage (0..1) one /metrics read shows: vLLM's engines averaged, or Dynamo's
    active decode blocks over the workers' total blocks; None when the body has neither."""
    usage = _engines_kv_usage(engine_metrics(text) if "vllm:" in text else {})
    if usage is not None:
        return usage
    dyn = dynamo_frontend_metrics(text)
    if dyn.get("total_kv_blocks") and "active_kv_blocks" in dyn:
        return round(dyn["active_kv_blocks"] / dyn["total_kv_blocks"], 4)
    return None


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def load_summary(before: str, after: str, seconds: float, peak_kv: float | None = None) -> dict[str, Any]:
    """What a load did, from the endpoint's /metrics read before and after it (and the highest KV-cache
    usage read while it ran, when sampled): vLLM's engines, or Dynamo's frontend.

    ``requests``: finished during the load; ``kv_cache_usage``: after it; ``prefix_cache_hit_rate``:
    over the load (vLLM: prefix-cache hits over queries, in tokens; Dynamo: cached prompt tokens
    over prompt tokens); ``output_tokens_per_s``: over ``seconds``. None where the server has no such
    series (Dynamo's KV blocks need its KV router; the mocker and the round-robin router have none).
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"seconds must be the positive length of the load, got {seconds!r}")
    if "vllm:" in after:
        old, new = engine_metrics(before), engine_metrics(after)

        def delta(field: str) -> float:
            return sum(rec.get(field, 0.0) - old.get(e, {}).get(field, 0.0) for e, rec in new.items())

        return {
            "source": "vllm",
            "engines": len(new),
            "requests": int(delta("success")),
            "kv_cache_usage": _engines_kv_usage(new),  # `after`, parsed once
            "kv_cache_usage_peak": peak_kv,
            "prefix_cache_hit_rate": _ratio(delta("prefix_cache_hits"), delta("prefix_cache_queries")),
            "output_tokens_per_s": round(delta("generation_tokens") / seconds, 1),
        }
    if "dynamo_frontend_" in after:
        old_d, new_d = dynamo_frontend_metrics(before), dynamo_frontend_metrics(after)

        def ddelta(field: str) -> float:
            return new_d.get(field, 0.0) - old_d.get(field, 0.0)

        return {
            "source": "dynamo",
            "requests": int(ddelta("requests")),
            "kv_cache_usage": kv_cache_usage(after),
            "kv_cache_usage_peak": peak_kv,
            "prefix_cache_hit_rate": _ratio(ddelta("cached_tokens"), ddelta("input_tokens")),
            "output_tokens_per_s": round(ddelta("output_tokens") / seconds, 1),
            "total_kv_blocks": int(new_d["total_kv_blocks"]) if "total_kv_blocks" in new_d else None,
        }
    raise ValueError("the endpoint's /metrics has neither vLLM's (vllm:) nor Dynamo's (dynamo_frontend_) series")
