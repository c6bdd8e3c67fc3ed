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


def engine_metrics(text: str) -> dict[str, dict[str, float]]:
    """Engine label -> {success, running, waiting, kv_cache_usage, ...} from a /metrics body."""
    if text_string_to_metric_families is None:
        raise ValueError(
            "reading vLLM's /metrics needs the Python package prometheus-client on the controller "
            "(pip install prometheus-client; the collection's venv has it)"
        )
    if not isinstance(text, str):
        raise ValueError(f"vLLM's /metrics body must be text, got {type(text).__name__}")
    engines: dict[str, dict[str, float]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ValueError(f"vLLM's /metrics is not the Prometheus text format: {exc}") from exc
    for family in families:
        for sample in family.samples:
            field = FIELDS.get(sample.name)
            engine = sample.labels.get("engine")
            if field is None or engine is None:
                continue
            record = engines.setdefault(str(engine), {})
            record[field] = record.get(field, 0.0) + float(sample.value)
    return dict(sorted(engines.items(), key=lambda kv: (len(kv[0]), kv[0])))


def engine_check(text: str, expected: int) -> dict[str, Any]:
    """Every engine 0..expected-1 present and with a finished request: {engines, missing, idle, problem}."""
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
        raise ValueError(f"expected must be the number of engines (1 or more), got {expected!r}")
    engines = engine_metrics(text)
    want = [str(i) for i in range(expected)]
    missing = [e for e in want if e not in engines]
    idle = [e for e in want if e in engines and engines[e].get("success", 0.0) <= 0]
    problems = []
    if missing:
        found = ", ".join(engines) or "none"
        problems.append(f"no metrics from engine {', '.join(missing)} of {expected} (found: {found})")
    if idle:
        counts = ", ".join(f"engine {e}: {int(engines[e].get('success', 0))}" for e in engines)
        problems.append(f"engine {', '.join(idle)} finished no request ({counts})")
    return {"engines": engines, "missing": missing, "idle": idle, "problem": "; ".join(problems)}
