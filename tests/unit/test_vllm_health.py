"""vllm_health: wait for /health, stop early on a crash loop, with the log tail.

A real HTTP server on loopback stands in for vLLM; fake `systemctl`, `journalctl` and `docker`
scripts on PATH stand in for the node's service manager (the hardware boundary). The polling,
the give-up rules and the messages are the module's real code.
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.modules import vllm_health


class Server:
    """/health answers 503 for the first `warmup` requests, then 200 (never, when warmup < 0)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.hits = warmup, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                ok = outer.warmup >= 0 and outer.hits > outer.warmup
                self.send_response(200 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(request.param)
    yield srv
    srv.httpd.shutdown()


def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, states: list[str]) -> Path:
    """systemctl/docker print the next of `states` ("ActiveState NRestarts") on each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    (tmp_path / "calls").write_text("")
    reader = f"""#!/bin/sh
echo "$0 $*" >> {tmp_path}/calls
n=$(grep -c . {tmp_path}/calls)
line=$(sed -n "${{n}}p" {tmp_path}/states); [ -n "$line" ] || line=$(tail -n 1 {tmp_path}/states)
"""
    (bin_dir / "systemctl").write_text(reader + 'set -- $line; printf "ActiveState=%s\\nNRestarts=%s\\n" "$1" "$2"\n')
    (bin_dir / "docker").write_text(
        '#!/bin/sh\nif [ "$1" = logs ]; then echo "docker log line"; echo "OSError: model not found"; exit 0; fi\n'
        + reader.split("\n", 1)[1]
        + 'echo "$line"\n'
    )
    (bin_dir / "journalctl").write_text("#!/bin/sh\necho 'INFO loading'\necho 'OSError: Repo id must be in the form'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls"


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        vllm_health.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("server", [2], indirect=True)
def test_waits_through_loading_until_200(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, ["activating 0", "active 0"])
    out = run_main({"url": server.url, "poll_interval": 1, "timeout": 300}, capsys)
    assert "failed" not in out, out
    assert out["status"] == 200
    assert server.hits == 3
    assert out["restarts"] == 0


@pytest.mark.parametrize("server", [-1], indirect=True)
def test_crash_loop_stops_early_with_the_log(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the baseline read, then NRestarts climbing: 5 -> 6 -> 7 -> 8 (3 restarts > max_restarts 2)
    fake_tools(tmp_path, monkeypatch, ["active 5", "activating 6", "active 7", "activating 8"])
    out = run_main({"url": server.url, "poll_interval": 1, "timeout": 600, "max_restarts": 2}, capsys)
    assert out["failed"] is True
    assert out["restarts"] == 3
    assert out["elapsed"] < 60  # not the 600 s timeout
    assert "unit vllm restarted 3 times while waiting (crash loop)" in out["msg"]
    assert "OSError: Repo id must be in the form" in out["msg"]
    assert out["log_tail"][-1] == "OSError: Repo id must be in the form"


@pytest.mark.parametrize("server", [-1], indirect=True)
def test_failed_unit_stops_at_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, ["active 0", "failed 0"])
    out = run_main({"url": server.url, "poll_interval": 1, "timeout": 600}, capsys)
    assert out["failed"] is True
    assert "the unit vllm is failed" in out["msg"]
    assert server.hits == 1


@pytest.mark.parametrize("server", [-1], indirect=True)
def test_exited_container_stops_at_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, ["running 0", "exited 0"])
    out = run_main({"url": server.url, "runtime": "docker", "poll_interval": 1, "timeout": 600}, capsys)
    assert out["failed"] is True
    assert "the container vllm is exited" in out["msg"]
    assert "OSError: model not found" in out["msg"]


@pytest.mark.parametrize("server", [-1], indirect=True)
def test_timeout_names_the_timeout(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_tools(tmp_path, monkeypatch, ["active 0"])
    out = run_main({"url": server.url, "poll_interval": 1, "timeout": 2}, capsys)
    assert out["failed"] is True
    assert "answered 503: no 200 within 2s of its start (timeout)" in out["msg"]
    # one poll a second at most; at least one (the unit tests run at nice 19 beside the e2e
    # streams in `make test`, where one poll and its systemctl read can take the whole 2 s)
    assert 1 <= server.hits <= 4
    assert out["elapsed"] < 60


@pytest.mark.parametrize("server", [-1], indirect=True)
def test_a_loading_vllm_keeps_its_deadline(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a process found loading 598 s into a 600 s timeout gets what is left, not 600 s more
    fake_tools(tmp_path, monkeypatch, ["active 0"])
    out = run_main({"url": server.url, "poll_interval": 1, "timeout": 600, "already_waited": 598}, capsys)
    assert out["failed"] is True
    assert out["elapsed"] < 60  # the 2 s left, not 600 s more (slack for a loaded machine)
    assert "no 200 within 600s of its start (timeout)" in out["msg"]
    assert 1 <= server.hits <= 4


def test_nothing_listening_reads_as_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({"url": "http://127.0.0.1:9", "runtime": "none", "poll_interval": 1, "timeout": 1}, capsys)
    assert out["failed"] is True
    assert out["status"] == -1
    assert "answered nothing" in out["msg"]


class ApiServer:
    """/health 200; /v1/models lists `models`; the chat answers `answer`; both need `key` when set."""

    def __init__(self, models: list[str], answer: str, key: str = "") -> None:
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def authorized(self) -> bool:
                if key and self.headers.get("Authorization") != f"Bearer {key}":
                    self.reply(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, None))
                if self.path == "/health":
                    self.send_response(200)
                    self.end_headers()
                elif self.authorized():
                    self.reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

            def do_POST(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path, doc))
                if self.authorized():
                    self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    srv = ApiServer(*request.param)
    yield srv
    srv.httpd.shutdown()


SERVED = {"runtime": "none", "poll_interval": 1, "timeout": 30, "model": "tiny-llama", "chat_prompt": "Say hello."}


@pytest.mark.parametrize("api", [(["tiny-llama"], "Hello there!", "k3y")], indirect=True)
def test_models_and_a_chat_completion_in_the_same_call(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**SERVED, "url": api.url, "api_key": "k3y", "chat_max_tokens": 8}, capsys)
    assert "failed" not in out, out
    assert out["models"] == ["tiny-llama"]
    assert out["answer"] == "Hello there!"
    calls = [r[:2] for r in api.requests]
    assert calls == [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
    body = api.requests[2][2]
    assert body == {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "min_tokens": 1,
        "temperature": 0,
    }
    assert "k3y" not in json.dumps(out)  # no_log: the key is masked in what the module returns


@pytest.mark.parametrize("api", [(["other-model"], "Hello", "")], indirect=True)
def test_a_model_not_listed_fails_before_the_chat(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**SERVED, "url": api.url}, capsys)
    assert out["failed"] is True
    assert "answers /health, but /v1/models lists ['other-model'], not tiny-llama" in out["msg"]
    assert [r[1] for r in api.requests] == ["/health", "/v1/models"]


@pytest.mark.parametrize("api", [(["tiny-llama"], "", "")], indirect=True)
def test_an_empty_completion_fails(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**SERVED, "url": api.url}, capsys)
    assert out["failed"] is True
    assert "the chat completion returned no text (HTTP 200)" in out["msg"]


@pytest.mark.parametrize("api", [(["tiny-llama"], "Hello", "right-key")], indirect=True)
def test_a_wrong_key_names_the_refusal(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**SERVED, "url": api.url, "api_key": "wrong-key"}, capsys)
    assert out["failed"] is True
    assert "/v1/models answered 401" in out["msg"]
    assert "Unauthorized" in out["msg"]


@pytest.mark.parametrize("api", [(["tiny-llama"], "Hello", "")], indirect=True)
def test_models_only_without_a_prompt(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({**SERVED, "url": api.url, "chat_prompt": ""}, capsys)
    assert "failed" not in out, out
    assert out["models"] == ["tiny-llama"] and out["answer"] == ""
    assert [r[1] for r in api.requests] == ["/health", "/v1/models"]


def test_a_prompt_needs_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({"url": "http://127.0.0.1:9", "chat_prompt": "hi"}, capsys)
    assert out["failed"] is True
    assert out["msg"] == "chat_prompt needs model: the chat completion names the served model"
