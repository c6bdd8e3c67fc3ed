# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One call to vLLM's OpenAI-compatible API, and the smoke chat completion the gates send.

Shared by the modules that talk to the endpoint (vllm_health: the serve gate's model list and chat
completion; vllm_requests: many at once), so that both send the same greedy request with the same
key handling and read the answer the same way.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.urls import open_url


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """A greedy chat completion of at least one token (the same answer for the same prompt)."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "min_tokens": 1,
        "temperature": 0,
    }


def answer_text(doc: Any) -> str:
    """The first choice's message text of a chat completion, '' when it has none."""
    try:
        return str(doc["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


def api_call(
    url: str, path: str, api_key: str, body: dict[str, Any] | None = None, timeout: float = 30
) -> tuple[int, Any, str]:
    """(HTTP status or -1, the decoded JSON or None, an error text) of GET (no body) or POST PATH."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer %s" % api_key
    try:
        resp = open_url(
            url.rstrip("/") + path,
            method="POST" if body is not None else "GET",
            data=json.dumps(body) if body is not None else None,
            headers=headers,
            timeout=timeout,
            validate_certs=False,
        )
        text = resp.read()
        status = int(resp.getcode())
    except Exception as exc:  # HTTPError carries a code and a body; connection errors neither
        status = int(getattr(exc, "code", -1) or -1)
        reader = getattr(exc, "read", None)
        text = reader() if callable(reader) else b""
        if status < 0:
            return status, None, str(exc)
    try:
        return status, json.loads(text), ""
    except ValueError:
        return status, None, (text or b"")[:300].decode("utf-8", "replace")
