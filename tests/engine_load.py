"""Shared by the data-parallel e2e tests: chat completions sent at once, and each engine's finished
requests read from the head's /metrics (prometheus_client's parser, as the serve gate and status do)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable

from multinode_vllm.module_utils._metrics import engine_metrics

# The chat request of the load: greedy, so the same non-empty answer every time (sampling the tiny
# model can give an empty one: one of 20 was, seen at 505fbd9).
CHAT_BODY = {
    "model": "tiny-llama",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 8,
    "min_tokens": 1,
    "temperature": 0,
}


def success_by_engine(base_url: str) -> dict[str, float]:
    """Engine (data-parallel rank) -> its finished requests so far."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=30) as resp:
        return {e: r.get("success", 0.0) for e, r in engine_metrics(resp.read().decode()).items()}


def every_engine_serves(
    base_url: str, chat: Callable[[], str], engines: int = 2, requests: int = 20, label: str = "dp"
) -> dict[str, float]:
    """Send `requests` chat completions at once: every one answers with text, every engine's counter
    moves, and the counters grow by exactly `requests`. Returns the counters after."""
    before = success_by_engine(base_url)
    assert set(before) == {str(i) for i in range(engines)}, before
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(chat())) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = success_by_engine(base_url)
    print(f"[{label}] finished requests per engine before {before}, after {requests} at once {after}")
    assert len(answers) == requests and all(answers)
    assert all(after[e] > before[e] for e in before), (before, after)
    assert sum(after.values()) - sum(before.values()) == requests
    return after
