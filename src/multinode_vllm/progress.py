"""Live progress from ansible-runner events: phase, task, hosts done/total, elapsed.

``Progress`` is the pure part (events in, state out, unit-tested); ``LiveDisplay`` draws it with
rich on a terminal and ``PlainDisplay`` prints one line per task and per failure (no TTY, CI=true).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import yaml
from rich.console import Console

from multinode_vllm.api import (
    HostUnreachable,
    MultinodeError,
    PlaybookFailed,
    RunOptions,
    RunResult,
    phase_of,
    run,
)

_DONE = ("runner_on_ok", "runner_on_skipped", "runner_on_failed", "runner_on_unreachable")


@dataclass
class Progress:
    """What the run is doing now, updated from each runner event."""

    started: float = field(default_factory=time.monotonic)
    play: str = ""
    phase: str = ""
    task: str = ""
    hosts_started: set[str] = field(default_factory=set)
    hosts_done: set[str] = field(default_factory=set)
    tasks_done: int = 0
    changed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (host, task, message)
    unreachable: list[tuple[str, str]] = field(default_factory=list)
    phases_seen: list[str] = field(default_factory=list)

    def update(self, event: Mapping[str, Any]) -> str | None:
        """Apply one event; return what changed: 'play', 'task', 'host', 'failed' or None."""
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self.play = str(data.get("name") or data.get("play") or "")
            self.phase = phase_of(self.play)
            if self.phase not in self.phases_seen:
                self.phases_seen.append(self.phase)
            self.task = ""
            self.hosts_started.clear()
            self.hosts_done.clear()
            return "play"
        if kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            # `task` is the bare name; `name` carries the role prefix ("ns.coll.role : Task")
            self.task = str(data.get("task") or data.get("name") or "")
            self.hosts_started.clear()
            self.hosts_done.clear()
            return "task"
        host = data.get("host")
        if kind == "runner_on_start" and host:
            self.hosts_started.add(str(host))
            return "host"
        if kind in _DONE and host:
            self.hosts_started.add(str(host))
            self.hosts_done.add(str(host))
            res = data.get("res") or {}
            if kind == "runner_on_ok" and res.get("changed"):
                self.changed += 1
            if len(self.hosts_done) == len(self.hosts_started):
                self.tasks_done += 1
            if kind == "runner_on_failed" and not data.get("ignore_errors"):
                msg = str(res.get("msg") or res.get("stderr") or "failed")
                self.failed.append((str(host), self.task, msg))
                return "failed"
            if kind == "runner_on_unreachable":
                self.unreachable.append((str(host), str(res.get("msg") or "unreachable")))
                return "failed"
            return "host"
        return None

    @property
    def hosts_total(self) -> int:
        return len(self.hosts_started)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        """One line: [phase] task  done/total hosts  elapsed."""
        hosts = f"{len(self.hosts_done)}/{self.hosts_total} hosts" if self.hosts_total else ""
        what = self.task or self.play or "starting"
        parts = [f"[{self.phase or '-'}]", what, hosts, fmt_secs(self.elapsed)]
        return "  ".join(p for p in parts if p)


def fmt_secs(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Display(Protocol):
    progress: Progress

    def __call__(self, event: Mapping[str, Any]) -> None: ...
    def __enter__(self) -> Display: ...
    def __exit__(self, *exc: object) -> None: ...


def want_plain(stream: IO[str] | None = None) -> bool:
    """Plain lines when not on a terminal, or in CI, or when asked (MNV_PLAIN=1)."""
    stream = stream or sys.stderr
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("MNV_PLAIN"):
        return True
    return not (hasattr(stream, "isatty") and stream.isatty())


class PlainDisplay:
    """One line per task start and per failure: readable in CI logs."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.progress = Progress()
        self.stream = stream or sys.stderr

    def __call__(self, event: Mapping[str, Any]) -> None:
        what = self.progress.update(event)
        if what in ("play", "task"):
            print(self.progress.line(), file=self.stream, flush=True)
        elif what == "failed":
            if self.progress.unreachable and event.get("event") == "runner_on_unreachable":
                host, msg = self.progress.unreachable[-1]
                print(f"  UNREACHABLE {host}: {msg}", file=self.stream, flush=True)
            else:
                host, task, msg = self.progress.failed[-1]
                print(f"  FAILED {host} '{task}': {msg}", file=self.stream, flush=True)

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Line:
    """Rendered on each refresh, so the elapsed time moves between events."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> str:
        return self.progress.line()


class LiveDisplay:
    """A rich status line (spinner) that keeps a log of finished phases above it."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.progress = Progress()
        self.console = Console(file=stream or sys.stderr)
        self._status: Any = None
        self._phase = ""
        self._phase_started = time.monotonic()

    def __call__(self, event: Mapping[str, Any]) -> None:
        what = self.progress.update(event)
        if what == "play" and self.progress.phase != self._phase:
            now = time.monotonic()
            if self._phase:
                self.console.log(f"[green]✓[/] {self._phase}  {fmt_secs(now - self._phase_started)}")
            self._phase, self._phase_started = self.progress.phase, now
        if what == "failed":
            if event.get("event") == "runner_on_unreachable":
                host, msg = self.progress.unreachable[-1]
                self.console.log(f"[red]✗ unreachable[/] {host}: {msg}")
            else:
                host, task, msg = self.progress.failed[-1]
                self.console.log(f"[red]✗ failed[/] {host} '{task}': {msg}")

    def __enter__(self) -> LiveDisplay:
        self._status = self.console.status(_Line(self.progress))
        self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)
            self._status = None
        if self._phase and not self.progress.failed and not self.progress.unreachable:
            self.console.log(f"[green]✓[/] {self._phase}  {fmt_secs(time.monotonic() - self._phase_started)}")


def make_display(quiet: bool = False, stream: IO[str] | None = None) -> PlainDisplay | LiveDisplay | None:
    """The display for this terminal; None when quiet (--json)."""
    if quiet:
        return None
    return PlainDisplay(stream) if want_plain(stream) else LiveDisplay(stream)


# ---------------------------------------------------------------- the CLI side shared by commands
#: Exit codes of `multinode-vllm up|status|down|bench` (docs/api.md, README "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Bad command-line input (exit 2)."""


def add_run_arguments(parser: argparse.ArgumentParser, *, tags: bool = True) -> None:
    """The ansible-playbook-like options every runner-backed command takes."""
    parser.add_argument("-i", "--inventory", help="inventory file or directory (default: see command)")
    if tags:
        parser.add_argument("-t", "--tags", action="append", default=[], help="only these phases (a,b)")
        parser.add_argument("--skip-tags", action="append", default=[], help="skip these phases (comma list)")
    parser.add_argument("-l", "--limit", action="append", default=[], help="only these hosts/groups")
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="K=V|@FILE|JSON",
        help="extra variables, like ansible-playbook -e (repeatable)",
    )
    parser.add_argument("--vault-password-file", help="file holding the vault password")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="ansible verbosity (-vvv)")
    parser.add_argument("--timeout", type=int, default=None, help="stop the run after this many seconds")
    parser.add_argument("--check", action="store_true", help="dry run (ansible --check)")
    parser.add_argument("--diff", action="store_true", help="show diffs (ansible --diff)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout, no progress")


def _split(values: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or ():
        out += [x.strip() for x in v.split(",") if x.strip()]
    return tuple(out)


def parse_extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """`-e` values: k=v pairs (strings, like ansible), @file (YAML/JSON), or an inline JSON/YAML map."""
    out: dict[str, Any] = {}
    for value in values:
        raw = value.strip()
        if not raw:
            continue
        if raw.startswith("@"):
            path = Path(raw[1:]).expanduser()
            try:
                data = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise UsageError(f"-e {raw}: cannot read {path}: {exc}") from exc
            if not isinstance(data, dict):
                raise UsageError(f"-e {raw}: {path} does not hold a mapping")
            out.update(data)
        elif raw.startswith("{"):
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise UsageError(f"-e {raw!r}: not valid JSON/YAML: {exc}") from exc
            if not isinstance(data, dict):
                raise UsageError(f"-e {raw!r}: not a mapping")
            out.update(data)
        else:
            for item in shlex.split(raw):
                key, sep, val = item.partition("=")
                if not sep or not key.isidentifier():
                    raise UsageError(f"-e {item!r}: expected KEY=VALUE with KEY a variable name")
                out[key] = val
    return out


def options_from_args(
    args: argparse.Namespace,
    *,
    playbook: str = "site.yml",
    inventory: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> RunOptions:
    """RunOptions from the parsed command line (UsageError on bad input)."""
    extra_vars = dict(extra or {})
    extra_vars.update(parse_extra_vars(getattr(args, "extra_vars", []) or []))
    return RunOptions(
        inventory=getattr(args, "inventory", None) or inventory,
        playbook=playbook,
        tags=_split(getattr(args, "tags", None)),
        skip_tags=_split(getattr(args, "skip_tags", None)),
        limit=_split(getattr(args, "limit", None)),
        extra_vars=extra_vars,
        vault_password_file=getattr(args, "vault_password_file", None),
        verbosity=int(getattr(args, "verbose", 0) or 0),
        timeout=getattr(args, "timeout", None),
        check=bool(getattr(args, "check", False)),
        diff=bool(getattr(args, "diff", False)),
    )


def print_summary(result: RunResult, stream: IO[str] | None = None) -> None:
    """The human summary after a run: per-host counters, per-phase times, the endpoint."""
    out = stream or sys.stderr
    for host, st in sorted(result.hosts.items()):
        print(
            f"  {host:<16} ok={st.ok} changed={st.changed} failed={st.failed} "
            f"unreachable={st.unreachable} skipped={st.skipped}",
            file=out,
        )
    times = result.phase_seconds()
    if times:
        print("  phases: " + ", ".join(f"{k} {fmt_secs(v)}" for k, v in times.items()), file=out)
    print(f"  {result.status} in {fmt_secs(result.elapsed)}", file=out)
    if result.endpoint:
        print(f"  endpoint: {result.endpoint}", file=out)


def error_document(exc: MultinodeError) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": "error", "error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, PlaybookFailed):
        doc.update(host=exc.host, task=exc.task, play=exc.play, detail=exc.message)
    res = getattr(exc, "result", None)
    if res is not None:
        doc["result"] = res.to_dict()
    doc["exit_code"] = exc.exit_code
    return doc


def execute(
    options: RunOptions, *, json_out: bool = False, emit_json: bool = True, stream: IO[str] | None = None
) -> tuple[int, RunResult | None, MultinodeError | None]:
    """Run with progress (or quietly for --json); print the summary or the error; return the exit code.

    With ``json_out`` the result (or error) document goes to stdout unless ``emit_json`` is False
    (a command that prints one document of its own, from ``result.to_dict()``/``error_document``).
    """
    err = stream or sys.stderr
    display = make_display(quiet=json_out, stream=stream)
    try:
        if display is None:
            result = run(options)
        else:
            with display:
                result = run(options, on_event=display)
    except MultinodeError as exc:
        if json_out:
            if emit_json:
                print(json.dumps(error_document(exc), indent=2, default=str))
        else:
            res = getattr(exc, "result", None)
            if res is not None:
                print_summary(res, err)
            if isinstance(exc, PlaybookFailed):
                kind = "UNREACHABLE" if isinstance(exc, HostUnreachable) else "FAILED"
                print(f"{kind}: host {exc.host}, task '{exc.task}'", file=err)
                print(f"  {exc.message}", file=err)
            else:
                print(f"error: {exc}", file=err)
        return exc.exit_code, getattr(exc, "result", None), exc
    if json_out:
        if emit_json:
            print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_summary(result, err)
    return EXIT_OK, result, None
