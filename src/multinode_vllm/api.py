"""Run the project's playbooks through ansible-runner: options in, typed result or typed error out.

The lcitool ``ansible_wrapper`` model: a frozen options dataclass, one function that turns it into
``ansible_runner.run`` keyword arguments, an event handler that feeds progress, the result built
from the runner's ``.stats`` and the event stream, and a typed error unless the run succeeded.

    >>> from multinode_vllm import run, RunOptions
    >>> result = run(RunOptions(inventory="inventories/local", tags=("status",)))
    >>> result.hosts["node1"].failed
    0
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ansible_runner

from multinode_vllm import PROJECT_DIR

#: The phases of site.yml, in order; a play belongs to the first phase its name mentions.
PHASES = ("validate", "prepare", "preflight", "model", "cluster", "serve", "dynamo", "bench", "status", "teardown")

#: Keys the serve phase may export with ``ansible.builtin.set_stats`` for the endpoint URL.
ENDPOINT_KEYS = ("multinode_endpoint", "vllm_serve_endpoint", "endpoint")

Event = Mapping[str, Any]
EventCallback = Callable[[Event], None]


# --------------------------------------------------------------------------------------- errors
class MultinodeError(Exception):
    """Base class of every error this API raises."""

    exit_code = 1


class BadInput(MultinodeError):
    """A path or value given to the run is wrong (missing playbook, vault file): nothing was run."""

    exit_code = 2


class InventoryError(BadInput):
    """The inventory is missing, does not parse, or matches no host: nothing was run."""


class PlaybookFailed(MultinodeError):
    """A task failed (or a host was unreachable); carries where, why, and the partial result."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        task: str | None = None,
        play: str | None = None,
        result: RunResult | None = None,
    ) -> None:
        self.message = message
        self.host = host
        self.task = task
        self.play = play
        self.result = result
        where = " ".join(p for p in (f"host {host}" if host else "", f"task '{task}'" if task else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class HostUnreachable(PlaybookFailed):
    """A host could not be reached over SSH (or its connection plugin)."""

    exit_code = 3


class RunTimeout(MultinodeError):
    """The run went past ``RunOptions.timeout`` and was stopped."""

    exit_code = 1

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        self.result = result
        super().__init__(message)


class RunInterrupted(MultinodeError):
    """The user interrupted the run (Ctrl-C); the playbook was stopped."""

    exit_code = 130

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        self.result = result
        super().__init__(message)


# -------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class RunOptions:
    """Everything one playbook run needs; paths may be relative to the repository root."""

    inventory: str | Path | None = None  # None: inventories/local (ansible.cfg's default)
    playbook: str = "site.yml"
    tags: Sequence[str] = ()
    skip_tags: Sequence[str] = ()
    limit: Sequence[str] = ()
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    vault_password_file: str | Path | None = None
    verbosity: int = 0
    timeout: int | None = None  # seconds for the whole run
    check: bool = False
    diff: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    forks: int | None = None


def _abs(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_DIR / p)


def resolve_inventory(options: RunOptions) -> Path:
    """The absolute inventory path, or InventoryError if it does not exist."""
    inv = _abs(options.inventory) if options.inventory is not None else PROJECT_DIR / "inventories" / "local"
    if not inv.exists():
        msg = f"inventory {inv} does not exist (pass -i PATH: an inventory file or directory)"
        raise InventoryError(msg)
    return inv


def build_runner_kwargs(options: RunOptions, private_data_dir: str | Path) -> dict[str, Any]:
    """The keyword arguments for ``ansible_runner.run`` (pure: touches no state, runs nothing)."""
    playbook = Path(options.playbook)
    if not (PROJECT_DIR / playbook).is_file():  # an absolute path stays itself
        raise BadInput(f"playbook {PROJECT_DIR / playbook} does not exist")
    cmdline: list[str] = []
    if options.check:
        cmdline.append("--check")
    if options.diff:
        cmdline.append("--diff")
    if options.vault_password_file is not None:
        vpf = _abs(options.vault_password_file)
        if not vpf.is_file():
            raise BadInput(f"vault password file {vpf} does not exist")
        cmdline += ["--vault-password-file", str(vpf)]
    envvars = {
        "ANSIBLE_CONFIG": str(PROJECT_DIR / "ansible.cfg"),
        # The runner starts `ansible-playbook` from PATH: take the one beside this interpreter
        # (the controller venv) even when the venv is not activated.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "ANSIBLE_NOCOLOR": "1",
        **dict(options.env),
    }
    kwargs: dict[str, Any] = {
        "private_data_dir": str(private_data_dir),
        "project_dir": str(PROJECT_DIR),
        "playbook": str(playbook),
        "inventory": str(resolve_inventory(options)),
        "envvars": envvars,
        "extravars": dict(options.extra_vars),
        "verbosity": options.verbosity or None,
        "quiet": True,
        "suppress_env_files": True,
    }
    if options.tags:
        kwargs["tags"] = ",".join(options.tags)
    if options.skip_tags:
        kwargs["skip_tags"] = ",".join(options.skip_tags)
    if options.limit:
        kwargs["limit"] = ",".join(options.limit)
    if cmdline:
        kwargs["cmdline"] = shlex.join(cmdline)
    if options.timeout:
        kwargs["timeout"] = int(options.timeout)
    if options.forks:
        kwargs["forks"] = int(options.forks)
    return kwargs


# --------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class PhaseTime:
    name: str  # the play name
    phase: str  # the phase (tag) the play belongs to, or the play name
    seconds: float


@dataclass(frozen=True)
class RunResult:
    status: str  # successful | failed | timeout | canceled
    rc: int
    hosts: dict[str, HostStats]
    phases: tuple[PhaseTime, ...]
    endpoint: str | None
    elapsed: float
    exported: dict[str, Any] = field(default_factory=dict)  # set_stats data
    failures: tuple[PlaybookFailed, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "successful"

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase (plays of the same phase summed), in run order."""
        out: dict[str, float] = {}
        for p in self.phases:
            out[p.phase] = out.get(p.phase, 0.0) + p.seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rc": self.rc,
            "elapsed": round(self.elapsed, 3),
            "endpoint": self.endpoint,
            "hosts": {h: vars(s) for h, s in sorted(self.hosts.items())},
            "phases": [{"name": p.name, "phase": p.phase, "seconds": round(p.seconds, 3)} for p in self.phases],
            "exported": self.exported,
            "failures": [{"host": f.host, "task": f.task, "play": f.play, "message": f.message} for f in self.failures],
        }


def phase_of(play_name: str) -> str:
    """The phase a play belongs to: the first phase word in its name, else the name itself."""
    low = play_name.lower()
    words = {w.strip(".,:;()[]/-_") for w in low.split()}
    for phase in PHASES:
        if phase in words:
            return phase
    return play_name


def _ts(event: Event) -> float | None:
    created = event.get("created")
    if not created:
        return None
    try:
        return datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        return None


def phase_times(events: Iterable[Event]) -> tuple[PhaseTime, ...]:
    """Durations of the plays from the timestamps of play starts and the final stats event."""
    starts: list[tuple[str, float]] = []
    end: float | None = None
    for ev in events:
        kind = ev.get("event")
        t = _ts(ev)
        if t is None:
            continue
        if kind == "playbook_on_play_start":
            data = ev.get("event_data", {})
            starts.append((str(data.get("name") or data.get("play") or "play"), t))
        end = t  # the last timestamp seen ends the last play
    out = []
    for i, (name, t0) in enumerate(starts):
        t1 = starts[i + 1][1] if i + 1 < len(starts) else (end if end is not None else t0)
        out.append(PhaseTime(name=name, phase=phase_of(name), seconds=max(0.0, t1 - t0)))
    return tuple(out)


def _message(res: Mapping[str, Any]) -> str:
    """The most useful line of a failed task's result."""
    msg = res.get("msg")
    parts = []
    if msg:
        parts.append(str(msg))
    for key in ("stderr", "module_stderr", "stdout"):
        val = res.get(key)
        if val and str(val).strip() and str(val).strip() not in parts:
            parts.append(str(val).strip())
            break
    if not parts and res.get("results"):
        # a loop: take the first failed item's message
        for item in res["results"]:
            if isinstance(item, Mapping) and item.get("failed"):
                return _message(item)
    if not parts and res.get("censored"):
        return str(res["censored"])  # no_log: ansible keeps the output to itself
    return "\n".join(parts) if parts else "task failed (no message)"


def failures_from_events(events: Iterable[Event]) -> list[PlaybookFailed]:
    """Every fatal failure in the stream: failed tasks not ignored, and unreachable hosts."""
    out: list[PlaybookFailed] = []
    for ev in events:
        kind = ev.get("event")
        data = ev.get("event_data", {})
        if kind not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        if kind == "runner_on_failed" and data.get("ignore_errors"):
            continue
        res = data.get("res") or {}
        cls = HostUnreachable if kind == "runner_on_unreachable" else PlaybookFailed
        out.append(
            cls(
                _message(res),
                host=data.get("host"),
                task=data.get("task"),
                play=data.get("play"),
            )
        )
    return out


def hosts_from_stats(stats: Mapping[str, Mapping[str, int]] | None) -> dict[str, HostStats]:
    """Per-host counters from the runner's ``.stats`` (keys ok/changed/failures/dark/...)."""
    if not stats:
        return {}
    names: set[str] = set()
    for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed"):
        names.update((stats.get(key) or {}).keys())

    def get(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    return {
        h: HostStats(
            ok=get("ok", h),
            changed=get("changed", h),
            failed=get("failures", h),
            unreachable=get("dark", h),
            skipped=get("skipped", h),
            rescued=get("rescued", h),
            ignored=get("ignored", h),
        )
        for h in sorted(names)
    }


def exported_from_events(events: Iterable[Event]) -> dict[str, Any]:
    """The ``set_stats`` data (aggregated) from the playbook_on_stats event."""
    data: dict[str, Any] = {}
    for ev in events:
        if ev.get("event") == "playbook_on_stats":
            art = ev.get("event_data", {}).get("artifact_data") or {}
            if isinstance(art, Mapping):
                data.update(art)
    return data


def endpoint_from(exported: Mapping[str, Any], events: Iterable[Event] = ()) -> str | None:
    """The endpoint URL the serve phase exported (set_stats), else one a task returned as a fact."""
    for key in ENDPOINT_KEYS:
        val = exported.get(key)
        if isinstance(val, str) and val:
            return val
    found = None
    for ev in events:
        if ev.get("event") != "runner_on_ok":
            continue
        facts = (ev.get("event_data", {}).get("res") or {}).get("ansible_facts") or {}
        for key in ENDPOINT_KEYS:
            if isinstance(facts.get(key), str) and facts[key]:
                found = facts[key]
    return found


def build_result(
    status: str,
    rc: int,
    stats: Mapping[str, Mapping[str, int]] | None,
    events: Sequence[Event],
    elapsed: float,
) -> RunResult:
    """The typed result of one run (pure: from the runner's status, rc, .stats and events)."""
    exported = exported_from_events(events)
    return RunResult(
        status=status,
        rc=rc,
        hosts=hosts_from_stats(stats),
        phases=phase_times(events),
        endpoint=endpoint_from(exported, events),
        elapsed=elapsed,
        exported=exported,
        failures=tuple(failures_from_events(events)),
    )


_INVENTORY_MARKERS = (
    "Unable to parse",
    "Could not match supplied host pattern",
    "provided hosts list is empty",
    "No inventory was parsed",
)


def raise_for_result(result: RunResult, stdout: str = "") -> RunResult:
    """Return the result if the run succeeded, else raise the typed error that explains it."""
    if result.status == "successful":
        return result
    if result.status == "timeout":
        raise RunTimeout(f"the run went past its timeout after {result.elapsed:.0f}s", result=result)
    if result.status == "canceled":
        raise RunInterrupted("interrupted; the playbook was stopped", result=result)
    # the last fatal failure is the one that stopped the play (any_errors_fatal)
    unreachable = [f for f in result.failures if isinstance(f, HostUnreachable)]
    chosen = unreachable[-1] if unreachable else (result.failures[-1] if result.failures else None)
    if chosen is not None:
        chosen.result = result
        raise chosen
    if not result.hosts and any(m in stdout for m in _INVENTORY_MARKERS):
        lines = [ln.strip() for ln in stdout.splitlines() if any(m in ln for m in _INVENTORY_MARKERS)]
        raise InventoryError(lines[0] if lines else "the inventory matched no host")
    tail = "\n".join(stdout.strip().splitlines()[-5:])
    raise PlaybookFailed(
        f"ansible-playbook ended {result.status} (rc {result.rc}) with no failed task" + (f":\n{tail}" if tail else ""),
        result=result,
    )


# ------------------------------------------------------------------------------------------ run
@contextlib.contextmanager
def _sigint_cancels(flag: threading.Event) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM (`kill PID`, a CI job's timeout) into a runner cancel, so that
    ansible-playbook is stopped rather than left running; in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(options: RunOptions, on_event: EventCallback | None = None) -> RunResult:
    """Run one playbook; return its RunResult or raise a MultinodeError subclass.

    ``on_event`` is called with every runner event (a dict with ``event``, ``event_data``,
    ``created``, ``stdout``...) as it happens.
    """
    events: list[Event] = []
    cancelled = threading.Event()

    def handler(event: Event) -> bool:
        events.append(event)
        if on_event is not None:
            on_event(event)
        return True

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mnv-runner-") as pdd:
        kwargs = build_runner_kwargs(options, pdd)
        with _sigint_cancels(cancelled):
            runner = ansible_runner.run(
                event_handler=handler,
                cancel_callback=cancelled.is_set,
                **kwargs,
            )
        elapsed = time.monotonic() - t0
        stdout = ""
        with contextlib.suppress(Exception):
            stdout = runner.stdout.read()
        stats = runner.stats
    result = build_result(str(runner.status), int(runner.rc or 0), stats, events, elapsed)
    return raise_for_result(result, stdout)
