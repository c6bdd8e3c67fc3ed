"""Local, signed apt repositories of stub packages that stand in for NVIDIA's and Docker's (test fixture).

There is no internet on the test machines, so the prepare phase's tests install from three
repositories built here, laid out like the real ones and carrying the real package names:

- ``cuda/``: flat, like ``developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/``
  (the test bed nodes are Debian 12): ``cuda-keyring`` (key, source list and pin, as the real
  one), ``cuda-drivers-<branch>``, ``nvidia-driver``, ``nvidia-kernel-open-dkms`` /
  ``nvidia-kernel-dkms``, ``nvidia-smi``, ``libnvidia-ml1``, ``nvidia-persistenced`` and
  ``nvidia-fabricmanager-<branch>``, each in two driver versions of the branch;
- ``libnvidia-container/``: flat, like ``nvidia.github.io/libnvidia-container/stable/deb/amd64``:
  ``nvidia-container-toolkit``, ``nvidia-container-toolkit-base``, ``libnvidia-container-tools``,
  ``libnvidia-container1`` with the real dependency chain;
- ``docker/``: ``dists/<suite>/stable``, like ``download.docker.com/linux/debian``: ``docker-ce``,
  ``docker-ce-cli``, ``containerd.io``, ``docker-buildx-plugin``, ``docker-compose-plugin``.

The stubs ship what the roles rely on, with harmless bodies: systemd units (dockerd,
containerd, nv-fabricmanager, nvidia-persistenced run an idle process), an ``nvidia-smi`` that
lists the GPUs of the node's ``libnvidia-ml.so.1`` (the test bed's fake NVML), an ``nvidia-ctk``
that edits daemon.json as the real one does, a ``docker`` CLI whose ``run --runtime=nvidia
--gpus all`` works only when the running (stub) daemon loaded the nvidia runtime and the
toolkit's hook is installed, and kernel-module packages whose postinst asks for a reboot
(``/var/run/reboot-required``) as Ubuntu's DKMS packages do.

Every repository is signed (InRelease, Release.gpg) with a throw-away key; ``key.asc`` is its
public half, ``.gnupg`` keeps it for a rebuild (nodes that trust it keep working). Build with
``python -m multinode_vllm.testbed.stub_apt DEST`` (prints the role variables as JSON); needs
``dpkg-deb``, ``dpkg-scanpackages`` (dpkg-dev) and ``gpg``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BRANCH = "550"
DRIVER_VERSIONS = ("550.127.05", "550.144.03")  # the first matches the fake NVML's driver
TOOLKIT_VERSION = "1.17.8-1"
DOCKER_VERSION = "5:27.5.1-1~debian.12~bookworm"
SUITE = "bookworm"
ARCH = "amd64"
CUDA_LABEL = "NVIDIA CUDA"  # the label cuda-keyring's pin file selects
TOOLS = ("dpkg-deb", "dpkg-scanpackages", "gpg")

# --- the stub programs -------------------------------------------------------------------------

NVIDIA_SMI = r'''#!/usr/bin/python3
"""Stub nvidia-smi (test bed): the GPUs of the node's libnvidia-ml.so.1, through NVML."""
import ctypes
import sys

FAILED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def main(argv):
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        print(FAILED)
        return 9
    if nvml.nvmlInit_v2() != 0:
        print(FAILED)
        return 9
    buf = ctypes.create_string_buffer(96)
    nvml.nvmlSystemGetDriverVersion(buf, 96)
    driver = buf.value.decode()
    count = ctypes.c_uint(0)
    nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
    gpus = []
    for i in range(count.value):
        handle = ctypes.c_void_p()
        nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle))
        name = ctypes.create_string_buffer(96)
        uuid = ctypes.create_string_buffer(96)
        nvml.nvmlDeviceGetName(handle, name, 96)
        nvml.nvmlDeviceGetUUID(handle, uuid, 96)
        gpus.append((i, name.value.decode(), uuid.value.decode()))
    nvml.nvmlShutdown()
    if "-L" in argv or "--list-gpus" in argv:
        for i, name, uuid in gpus:
            print("GPU %d: %s (UUID: %s)" % (i, name, uuid))
    elif any(a.startswith("--query-gpu=driver_version") for a in argv):
        for _ in gpus:
            print(driver)
    else:
        print("NVIDIA-SMI stub    Driver Version: %s" % driver)
        for i, name, uuid in gpus:
            print("%d  %s  %s" % (i, name, uuid))
    return 0


sys.exit(main(sys.argv[1:]))
'''

NVIDIA_CTK = r'''#!/usr/bin/python3
"""Stub nvidia-ctk (test bed): `runtime configure --runtime=docker` edits daemon.json as the real one."""
import argparse
import json
import os
import sys

VERSION = "@TOOLKIT_VERSION@"


def main(argv):
    if argv[:1] in (["--version"], ["-v"]):
        print("NVIDIA Container Toolkit CLI version %s" % VERSION.split("-")[0])
        return 0
    if argv[:2] != ["runtime", "configure"]:
        print("nvidia-ctk stub: only 'runtime configure' is implemented", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(prog="nvidia-ctk runtime configure")
    parser.add_argument("--runtime", default="docker")
    parser.add_argument("--config", default="")
    parser.add_argument("--set-as-default", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv[2:])
    if args.runtime != "docker":
        print("ERRO[0000] unrecognized runtime '%s'" % args.runtime, file=sys.stderr)
        return 1
    path = args.config or "/etc/docker/daemon.json"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        config = json.loads(text) if text.strip() else {}
    except FileNotFoundError:
        config = {}
    except ValueError as exc:
        print("ERRO[0000] unable to load config: %s" % exc, file=sys.stderr)
        return 1
    config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    if args.set_as_default:
        config["default-runtime"] = "nvidia"
    out = json.dumps(config, indent=4, sort_keys=True)
    if args.dry_run:
        print(out)
        return 0
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(out)
    print("INFO[0000] Wrote updated config to %s" % path, file=sys.stderr)
    print("INFO[0000] It is recommended that docker daemon be restarted.", file=sys.stderr)
    return 0


sys.exit(main(sys.argv[1:]))
'''

DOCKER_CLI = r'''#!/usr/bin/python3
"""Stub docker CLI (test bed): `run [--rm] [--runtime=nvidia] [--gpus all] IMAGE CMD...` runs CMD on
the node as if in a container, but only as the real daemon would allow it: the daemon must be
running, --runtime=nvidia must be in the configuration the daemon loaded at its last (re)start,
and --gpus needs the toolkit's nvidia-container-runtime-hook."""
import json
import os
import shutil
import sys

LOADED = os.environ.get("DOCKER_STUB_LOADED", "/run/docker-stub/daemon.json")


def err(msg, rc):
    print(msg, file=sys.stderr)
    return rc


def main(argv):
    if not argv or argv[0] in ("-v", "--version"):
        print("Docker version 27.5.1, build stub")
        return 0
    if not os.path.exists(LOADED):
        return err(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", 1
        )
    with open(LOADED, encoding="utf-8") as fh:
        loaded = json.load(fh)
    if argv[0] == "info":
        print("Runtimes: %s" % " ".join(sorted(["io.containerd.runc.v2", "runc"] + list(loaded.get("runtimes", {})))))
        print("Default Runtime: %s" % loaded.get("default-runtime", "runc"))
        return 0
    if argv[0] != "run":
        return err("docker stub: only run, info and --version are implemented", 1)
    args = list(argv[1:])
    gpus = runtime = None
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "--rm":
            continue
        if opt in ("--gpus", "--runtime") and args:
            value = args.pop(0)
        elif opt.startswith(("--gpus=", "--runtime=")):
            opt, value = opt.split("=", 1)
        else:
            return err("docker stub: unsupported option %s" % opt, 125)
        if opt == "--gpus":
            gpus = value
        else:
            runtime = value
    if len(args) < 2:
        return err("docker stub: run needs IMAGE and a command", 125)
    command = args[1:]
    if runtime and runtime not in ("runc", "io.containerd.runc.v2") and runtime not in loaded.get("runtimes", {}):
        return err("docker: Error response from daemon: unknown or invalid runtime name: %s." % runtime, 125)
    if gpus and not shutil.which("nvidia-container-runtime-hook"):
        return err(
            'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].', 125
        )
    if not gpus and runtime != "nvidia" and command[0] == "nvidia-smi":
        return err(
            'docker: Error response from daemon: failed to create task: exec: "nvidia-smi": '
            "executable file not found in $PATH: unknown.",
            127,
        )
    os.execvp(command[0], command)


sys.exit(main(sys.argv[1:]))
'''

DOCKERD = """#!/bin/sh
# Stub dockerd (test bed): loads /etc/docker/daemon.json as dockerd does at start (refusing invalid
# JSON), records what it loaded for the stub docker CLI, then idles.
set -e
mkdir -p /run/docker-stub
if [ -s /etc/docker/daemon.json ]; then
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' /etc/docker/daemon.json || {
    echo "unable to configure the Docker daemon with file /etc/docker/daemon.json: invalid JSON" >&2; exit 1; }
  cp /etc/docker/daemon.json /run/docker-stub/daemon.json
else
  echo '{}' > /run/docker-stub/daemon.json
fi
exec sleep infinity
"""

IDLE = """#!/bin/sh
# Stub {what} (test bed): records its arguments, then idles like the real daemon.
mkdir -p /run/{name}
echo "$@" > /run/{name}/args
exec sleep infinity
"""

DOCKER_UNIT = """[Unit]
Description=Docker Application Container Engine
Documentation=https://docs.docker.com
After=network-online.target containerd.service
Wants=network-online.target containerd.service

[Service]
Type=simple
ExecStart=/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock
ExecStopPost=/bin/rm -f /run/docker-stub/daemon.json
Restart=always

[Install]
WantedBy=multi-user.target
"""

CONTAINERD_UNIT = """[Unit]
Description=containerd container runtime
After=network.target

[Service]
ExecStart=/usr/bin/containerd
Restart=always

[Install]
WantedBy=multi-user.target
"""

FABRICMANAGER_UNIT = """[Unit]
Description=NVIDIA fabric manager service
After=network-online.target

[Service]
User=root
PrivateTmp=false
ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg

[Install]
WantedBy=multi-user.target
"""

# As distributions ship it: persistence mode off until the role's drop-in turns it on.
PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target
StopWhenUnneeded=true

[Service]
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""

# What Ubuntu's DKMS module packages do through update-notifier: ask for a reboot.
REBOOT_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  touch /var/run/reboot-required
  echo {name} >> /var/run/reboot-required.pkgs
fi
"""

CUDA_PIN = """Package: nsight-compute
Pin: origin *ubuntu.com*
Pin-Priority: -1

Package: nsight-systems
Pin: origin *ubuntu.com*
Pin-Priority: -1

Package: *
Pin: release l=NVIDIA CUDA
Pin-Priority: 600
"""


# --- packages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StubPackage:
    name: str
    version: str
    description: str
    arch: str = ARCH
    fields: dict[str, str] = field(default_factory=dict)  # Depends, Conflicts, Provides, ...
    files: dict[str, tuple[str | bytes, int]] = field(default_factory=dict)  # path -> (content, mode)
    postinst: str = ""

    @property
    def filename(self) -> str:
        version = self.version.split(":", 1)[-1]  # the epoch is not part of the file name
        return f"{self.name}_{version}_{self.arch}.deb"

    def control(self) -> str:
        lines = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            f"Architecture: {self.arch}",
            "Maintainer: multinode.vllm test bed <stub@example.invalid>",
            "Section: misc",
            "Priority: optional",
        ]
        lines += [f"{k}: {v}" for k, v in self.fields.items() if v]
        lines.append(f"Description: {self.description} (test-bed stub)")
        return "\n".join(lines) + "\n"


def _exe(text: str) -> tuple[str, int]:
    return (text, 0o755)


def _doc(text: str) -> tuple[str, int]:
    return (text, 0o644)


def cuda_packages(
    repo_url: str, keyring: bytes, branch: str = BRANCH, versions: Sequence[str] = DRIVER_VERSIONS
) -> list[StubPackage]:
    """The Debian 12 CUDA repository's driver packages (names as NVIDIA's debian12 repository)."""
    pkgs = [
        StubPackage(
            "cuda-keyring",
            "1.1-1",
            "GPG keyring for the CUDA repository",
            arch="all",
            files={
                "usr/share/keyrings/cuda-archive-keyring.gpg": (keyring, 0o644),
                f"etc/apt/sources.list.d/cuda-debian12-{'x86_64'}.list": _doc(
                    f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {repo_url} /\n"
                ),
                "etc/apt/preferences.d/cuda-repository-pin-600": _doc(CUDA_PIN),
            },
        )
    ]
    for upstream in versions:
        v = f"{upstream}-1"
        exact = f"(= {v})"
        for flavour, other in (("nvidia-kernel-open-dkms", "nvidia-kernel-dkms"), ("nvidia-kernel-dkms", None)):
            conflicts = other or "nvidia-kernel-open-dkms"
            pkgs.append(
                StubPackage(
                    flavour,
                    v,
                    f"NVIDIA binary kernel module DKMS source ({'open' if 'open' in flavour else 'proprietary'})",
                    fields={
                        "Source": "nvidia-graphics-drivers",
                        "Provides": f"nvidia-kernel-{upstream}",
                        "Conflicts": conflicts,
                        "Replaces": conflicts,
                    },
                    files={
                        f"usr/src/nvidia-{upstream}/dkms.conf": _doc(
                            f'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="{upstream}"\n'
                        )
                    },
                    postinst=REBOOT_POSTINST.format(name=flavour),
                )
            )
        pkgs += [
            StubPackage(
                "libnvidia-ml1",
                v,
                "NVIDIA Management Library (NVML) runtime library",
                fields={"Source": "nvidia-graphics-drivers"},
                files={"usr/share/doc/libnvidia-ml1/version": _doc(upstream + "\n")},
            ),
            StubPackage(
                "nvidia-smi",
                v,
                "NVIDIA System Management Interface",
                fields={"Source": "nvidia-graphics-drivers", "Depends": f"libnvidia-ml1 {exact}, python3"},
                files={"usr/bin/nvidia-smi": _exe(NVIDIA_SMI)},
            ),
            StubPackage(
                "nvidia-persistenced",
                v,
                "daemon to maintain persistent software state in the NVIDIA driver",
                files={
                    "usr/bin/nvidia-persistenced": _exe(
                        IDLE.format(what="nvidia-persistenced", name="nvidia-persistenced")
                    ),
                    "lib/systemd/system/nvidia-persistenced.service": _doc(PERSISTENCED_UNIT),
                },
            ),
            StubPackage(
                "nvidia-driver",
                v,
                "NVIDIA metapackage",
                fields={
                    "Source": "nvidia-graphics-drivers",
                    "Depends": f"nvidia-kernel-dkms {exact} | nvidia-kernel-open-dkms {exact}, nvidia-smi {exact}, "
                    f"libnvidia-ml1 {exact}",
                },
            ),
            StubPackage(
                f"cuda-drivers-{branch}",
                v,
                f"CUDA Driver meta-package, branch {branch}",
                fields={
                    "Source": "cuda-drivers",
                    "Depends": f"nvidia-driver {exact}, nvidia-kernel-dkms {exact} | nvidia-kernel-open-dkms {exact}, "
                    f"nvidia-persistenced {exact}, nvidia-smi {exact}",
                },
            ),
            StubPackage(
                f"nvidia-fabricmanager-{branch}",
                v,
                "Fabric Manager for NVSwitch based systems",
                fields={
                    "Source": "nvidia-fabricmanager",
                    "Conflicts": "nvidia-fabricmanager",
                    "Provides": "nvidia-fabricmanager",
                },
                files={
                    "usr/bin/nv-fabricmanager": _exe(IDLE.format(what="nv-fabricmanager", name="nvidia-fabricmanager")),
                    "usr/share/nvidia/nvswitch/fabricmanager.cfg": _doc("LOG_LEVEL=4\nFABRIC_MODE=0\n"),
                    "lib/systemd/system/nvidia-fabricmanager.service": _doc(FABRICMANAGER_UNIT),
                },
            ),
        ]
    return pkgs


def toolkit_packages(version: str = TOOLKIT_VERSION) -> list[StubPackage]:
    """nvidia-container-toolkit and its dependency chain, as in nvidia.github.io/libnvidia-container."""
    upper = "2.0.0"
    return [
        StubPackage(
            "libnvidia-container1",
            version,
            "NVIDIA container runtime library",
            files={"usr/share/doc/libnvidia-container1/version": _doc(version + "\n")},
        ),
        StubPackage(
            "libnvidia-container-tools",
            version,
            "NVIDIA container runtime library (command-line tools)",
            fields={"Depends": f"libnvidia-container1 (>= {version}), libnvidia-container1 (<< {upper})"},
            files={"usr/bin/nvidia-container-cli": _exe("#!/bin/sh\necho 'nvidia-container-cli stub'\n")},
        ),
        StubPackage(
            "nvidia-container-toolkit-base",
            version,
            "NVIDIA Container Toolkit Base",
            fields={
                "Breaks": f"nvidia-container-toolkit (<< {version})",
                "Replaces": f"nvidia-container-toolkit (<< {version})",
            },
            files={
                "usr/bin/nvidia-ctk": _exe(NVIDIA_CTK.replace("@TOOLKIT_VERSION@", version)),
                "usr/bin/nvidia-container-runtime": _exe('#!/bin/sh\nexec runc "$@"\n'),
            },
        ),
        StubPackage(
            "nvidia-container-toolkit",
            version,
            "NVIDIA Container toolkit",
            fields={
                "Depends": f"nvidia-container-toolkit-base (= {version}), libnvidia-container-tools (>= {version}), "
                f"libnvidia-container-tools (<< {upper})"
            },
            files={"usr/bin/nvidia-container-runtime-hook": _exe("#!/bin/sh\nexit 0\n")},
        ),
    ]


def docker_packages(version: str = DOCKER_VERSION) -> list[StubPackage]:
    """Docker's repository packages (download.docker.com/linux/debian)."""
    plugin = version.split(":", 1)[-1]
    return [
        StubPackage(
            "containerd.io",
            "1.7.25-1",
            "An open and reliable container runtime",
            fields={"Provides": "containerd, runc", "Conflicts": "containerd, runc", "Replaces": "containerd, runc"},
            files={
                "usr/bin/containerd": _exe(IDLE.format(what="containerd", name="containerd-stub")),
                "usr/bin/runc": _exe("#!/bin/sh\necho 'runc stub'\n"),
                "lib/systemd/system/containerd.service": _doc(CONTAINERD_UNIT),
            },
        ),
        StubPackage(
            "docker-ce-cli",
            version,
            "Docker CLI: the open-source application container engine",
            files={"usr/bin/docker": _exe(DOCKER_CLI)},
        ),
        StubPackage(
            "docker-ce",
            version,
            "Docker: the open-source application container engine",
            fields={"Depends": "containerd.io (>= 1.6.24), docker-ce-cli, python3"},
            files={"usr/bin/dockerd": _exe(DOCKERD), "lib/systemd/system/docker.service": _doc(DOCKER_UNIT)},
        ),
        StubPackage("docker-buildx-plugin", plugin.replace("27.5.1", "0.20.0"), "Docker Buildx cli plugin."),
        StubPackage("docker-compose-plugin", plugin.replace("27.5.1", "2.32.4"), "Docker Compose (V2) plugin."),
    ]


# --- building ------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def build_deb(pkg: StubPackage, out_dir: Path, work: Path) -> Path:
    root = work / f"{pkg.name}_{pkg.version.replace(':', '_')}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(pkg.control())
    if pkg.postinst:
        post = root / "DEBIAN" / "postinst"
        post.write_text(pkg.postinst)
        post.chmod(0o755)
    for rel, (content, mode) in pkg.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(mode)
    out = out_dir / pkg.filename
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)])
    return out


class Signer:
    """A throw-away GnuPG home with one signing key (ed25519, no passphrase).

    ``reuse``: a home saved by an earlier build (``<dest>/.gnupg``), so that a rebuilt repository is
    signed by the key the nodes' keyrings already trust.
    """

    def __init__(
        self,
        home: Path,
        uid: str = "multinode.vllm test-bed repository <stub@example.invalid>",
        reuse: Path | None = None,
    ) -> None:
        self.home = home
        if reuse is not None and (reuse / "pubring.kbx").exists():
            shutil.copytree(reuse, home, ignore=shutil.ignore_patterns("S.*", "*.lock"))
            home.chmod(0o700)
            return
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-generate-key", uid, "ed25519", "sign", "never")

    def save(self, dest: Path) -> None:
        shutil.copytree(self.home, dest, ignore=shutil.ignore_patterns("S.*", "*.lock"))

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(
            ["gpg", "--homedir", str(self.home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
        )

    def public_armored(self) -> str:
        return self._gpg("--armor", "--export").stdout

    def public_binary(self) -> bytes:
        proc = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--export"], capture_output=True, check=True
        )
        return proc.stdout

    def sign(self, release: Path) -> None:
        self._gpg("--yes", "--clearsign", "-o", str(release.with_name("InRelease")), str(release))
        self._gpg("--yes", "--armor", "--detach-sign", "-o", str(release.with_name("Release.gpg")), str(release))

    def close(self) -> None:
        # the agent a key generation starts must not outlive the build
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True, check=False)


def _index(repo: Path, subdir: str, packages_dir: Path) -> None:
    """Packages and Packages.gz of the .debs under repo/subdir, written into packages_dir."""
    proc = _run(["dpkg-scanpackages", "--multiversion", subdir, "/dev/null"], cwd=repo)
    packages_dir.mkdir(parents=True, exist_ok=True)
    (packages_dir / "Packages").write_text(proc.stdout)
    with gzip.open(packages_dir / "Packages.gz", "wt") as gz:
        gz.write(proc.stdout)


def release_text(fields: dict[str, str], files: Iterable[tuple[str, Path]]) -> str:
    """A Release file: the fields, then MD5Sum/SHA256 of each (name, path)."""
    entries = [(name, path.read_bytes()) for name, path in files]
    lines = [f"{k}: {v}" for k, v in fields.items()]
    lines.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()))
    for algo, title in (("md5", "MD5Sum"), ("sha256", "SHA256")):
        lines.append(f"{title}:")
        lines += [f" {hashlib.new(algo, data).hexdigest()} {len(data)} {name}" for name, data in entries]
    return "\n".join(lines) + "\n"


def _flat_repo(repo: Path, pkgs: Sequence[StubPackage], signer: Signer, work: Path, label: str, origin: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        build_deb(pkg, repo, work)
    _index(repo, ".", repo)
    fields = {"Origin": origin, "Label": label, "Architectures": f"{ARCH} all"}
    names = ("Packages", "Packages.gz")
    (repo / "Release").write_text(release_text(fields, [(n, repo / n) for n in names]))
    signer.sign(repo / "Release")


def _dists_repo(
    repo: Path, pkgs: Sequence[StubPackage], signer: Signer, work: Path, suite: str, component: str
) -> None:
    pool = repo / "pool" / component / ARCH
    pool.mkdir(parents=True, exist_ok=True)
    for pkg in pkgs:
        build_deb(pkg, pool, work)
    dist = repo / "dists" / suite
    rel_dir = f"{component}/binary-{ARCH}"
    _index(repo, f"pool/{component}/{ARCH}", dist / rel_dir)
    fields = {
        "Origin": "Docker",
        "Label": "Docker CE",
        "Suite": suite,
        "Codename": suite,
        "Architectures": ARCH,
        "Components": component,
    }
    files = [(f"{rel_dir}/{n}", dist / rel_dir / n) for n in ("Packages", "Packages.gz")]
    (dist / "Release").write_text(release_text(fields, files))
    signer.sign(dist / "Release")


def build(
    dest: Path,
    *,
    branch: str = BRANCH,
    driver_versions: Sequence[str] = DRIVER_VERSIONS,
    toolkit_version: str = TOOLKIT_VERSION,
    docker_version: str = DOCKER_VERSION,
    suite: str = SUITE,
) -> dict[str, Any]:
    """Build the three repositories under ``dest`` (replaced as a whole); return the role variables."""
    missing = missing_tools()
    if missing:
        raise RuntimeError(f"stub apt repositories need {', '.join(missing)}: apt-get install dpkg-dev gnupg")
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    work = Path(tempfile.mkdtemp(prefix="mnv-stub-apt-"))
    signer = Signer(work / "gnupg", reuse=dest / ".gnupg")
    try:
        (stage / "key.asc").write_text(signer.public_armored())
        cuda_url = f"file://{dest}/cuda/"
        _flat_repo(
            stage / "cuda",
            cuda_packages(cuda_url, signer.public_binary(), branch, driver_versions),
            signer,
            work,
            label=CUDA_LABEL,
            origin="NVIDIA",
        )
        _flat_repo(
            stage / "libnvidia-container",
            toolkit_packages(toolkit_version),
            signer,
            work,
            label="libnvidia-container",
            origin="https://nvidia.github.io/libnvidia-container",
        )
        _dists_repo(stage / "docker", docker_packages(docker_version), signer, work, suite, "stable")
        signer.save(stage / ".gnupg")
        stage.chmod(0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old{os.getpid()}")
            dest.rename(old)
            stage.rename(dest)
            shutil.rmtree(old)
        else:
            stage.rename(dest)
    finally:
        signer.close()
        shutil.rmtree(work, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return role_vars(dest, branch=branch, driver_version=driver_versions[0], toolkit_version=toolkit_version)


def role_vars(dest: Path, *, branch: str, driver_version: str, toolkit_version: str) -> dict[str, Any]:
    """The role variables that point the prepare phase at the repositories under ``dest``."""
    key = f"file://{dest}/key.asc"
    return {
        "nvidia_driver_branch": branch,
        "nvidia_driver_version": driver_version,
        "nvidia_driver_cuda_keyring_url": f"file://{dest}/cuda/cuda-keyring_1.1-1_all.deb",
        "nvidia_container_toolkit_repo_url": f"file://{dest}/libnvidia-container",
        "nvidia_container_toolkit_repo_key_url": key,
        "nvidia_container_toolkit_version": toolkit_version,
        "docker_repo_url": f"file://{dest}/docker",
        "docker_repo_key_url": key,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multinode_vllm.testbed.stub_apt",
        description="Build the signed stub apt repositories (CUDA, libnvidia-container, Docker) under DEST.",
    )
    parser.add_argument("dest", type=Path)
    parser.add_argument("--branch", default=BRANCH)
    parser.add_argument("--driver-version", action="append", dest="driver_versions")
    args = parser.parse_args(argv)
    versions = tuple(args.driver_versions or DRIVER_VERSIONS)
    if any(not v.startswith(args.branch + ".") for v in versions):
        parser.error(
            f"--driver-version {versions}: every version must be of --branch {args.branch} ({args.branch}.x.y)"
        )
    try:
        out = build(args.dest, branch=args.branch, driver_versions=versions)
    except RuntimeError as exc:
        print(f"stub_apt: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
