"""The node image: Debian 12 from Debian packages (debootstrap), built once and cached.

The image carries a label with a hash of the build recipe (packages + preparation files); a
recipe change rebuilds it, anything else reuses it. The rootfs is removed after the import; the
timings of the last build stay in ``/var/tmp/multinode-vllm/image/build.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from multinode_vllm.testbed.podman import TestbedError, podman, run, tar_pipe
from multinode_vllm.testbed.state import Steps, image_dir

IMAGE = "localhost/multinode-vllm-node:bookworm"
#: The SLURM test bed's image: the node image plus Debian's SLURM 22.05 and munge.
SLURM_IMAGE = "localhost/multinode-vllm-node:bookworm-slurm"
#: The Dynamo test bed's image: the node image plus Debian's etcd 3.4 and NATS 2.9 (the nodes have
#: no internet: the dynamo_plane role finds them installed).
DYNAMO_IMAGE = "localhost/multinode-vllm-node:bookworm-dynamo"
RECIPE_LABEL = "multinode-vllm.recipe"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "python3",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "openssh-server",
    "curl",
    "ca-certificates",
    "sudo",
    "procps",
    "nftables",
    # vLLM's CPU extension (vllm._C) links against libnuma.
    "libnuma1",
)

# Each node makes its own SSH host keys at first boot (the image carries none).
HOSTKEYS_UNIT = """\
[Unit]
Description=Generate this node's SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=ssh.service
"""

SSHD_DROPIN = """\
# multinode-vllm test bed: keys only, no DNS lookups of clients (faster logins)
PasswordAuthentication no
UseDNS no
"""

#: Packages added on top of PACKAGES, per image tag (part of that image's recipe).
EXTRA_PACKAGES: dict[str, tuple[str, ...]] = {
    IMAGE: (),
    SLURM_IMAGE: ("slurm-wlm", "munge"),
    DYNAMO_IMAGE: ("etcd-server", "nats-server"),
}

#: Files written into the rootfs (path -> content); part of the recipe hash.
FILES = {
    "etc/systemd/system/ssh-hostkeys.service": HOSTKEYS_UNIT,
    "etc/ssh/sshd_config.d/multinode-vllm.conf": SSHD_DROPIN,
    "etc/hostname": "node\n",
}
#: Units masked in the image: no consoles in a container.
MASKED = ("getty@tty1.service", "console-getty.service", "serial-getty@.service")
#: Bump when the preparation code changes in a way FILES does not show.
PREPARE_VERSION = 2


def packages(image: str = IMAGE) -> tuple[str, ...]:
    if image not in EXTRA_PACKAGES:
        raise TestbedError(f"unknown node image {image!r}: use one of {', '.join(EXTRA_PACKAGES)}")
    return PACKAGES + EXTRA_PACKAGES[image]


def recipe(image: str = IMAGE) -> dict[str, Any]:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(packages(image)),
        "files": FILES,
        "masked": list(MASKED),
        "prepare_version": PREPARE_VERSION,
    }


def recipe_hash(image: str = IMAGE) -> str:
    blob = json.dumps(recipe(image), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- the Debian mirror, from the host's apt sources -------------------------------------------


def _one_line_sources(text: str) -> Iterable[tuple[str, list[str], list[str]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 3:
            yield words[0], [words[1]], words[2:]


def _deb822_sources(text: str) -> Iterable[tuple[str, list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw:
                continue
            key, _, value = raw.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split(), fields.get("components", "").split()


def mirror_from_sources(files: dict[str, str], suite: str = SUITE) -> str | None:
    """The first ``deb`` URI serving ``suite`` (exactly, not -security/-updates) with ``main``."""
    for name in sorted(files):
        text = files[name]
        parser = _deb822_sources if name.endswith(".sources") else _one_line_sources
        for uri, suites, comps in parser(text):
            if suite in suites and "main" in comps and uri.startswith(("http://", "https://", "file:")):
                return uri.rstrip("/")
    return None


def host_mirror(suite: str = SUITE) -> str:
    if os.environ.get("MNV_DEBIAN_MIRROR"):
        return os.environ["MNV_DEBIAN_MIRROR"]
    files: dict[str, str] = {}
    candidates = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        candidates += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for p in candidates:
        try:
            # sources.list first: prefix keys so it sorts before the directory's files
            files[("0" if p.name == "sources.list" else "1") + p.name] = p.read_text()
        except OSError:
            continue
    return mirror_from_sources(files, suite) or DEFAULT_MIRROR


# --- build ----------------------------------------------------------------------------------


def image_recipe_label(image: str = IMAGE) -> str | None:
    """The recipe hash on the image, or None when there is no such image."""
    proc = run(["podman", "image", "inspect", "--format", "json", image], check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout or "[]")
    if not info:
        return None
    labels = (info[0].get("Labels") or info[0].get("Config", {}).get("Labels") or {}) or {}
    value = labels.get(RECIPE_LABEL)
    return str(value) if value is not None else None


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with open("/proc/mounts", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix[:-1]:
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_rootfs(root: Path) -> None:
    """Remove a (possibly half-built) rootfs; unmount what debootstrap left mounted first."""
    if not root.exists():
        return
    for point in _mounts_under(root):
        run(["umount", "-l", point], check=False)
    left = _mounts_under(root)
    if left:
        raise TestbedError(f"refusing to delete {root}: still mounted: {', '.join(left)}")
    shutil.rmtree(root)


def prepare_rootfs(root: Path) -> None:
    """Turn a debootstrap tree into a node image (see testbed-nodes.md §2)."""
    # Every node gets its own machine-id: empty file + dbus's copy as a link to it (systemd reads
    # /var/lib/dbus/machine-id first; a copied id would be shared by all nodes).
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.symlink_to("/etc/machine-id")
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/dev/null")
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    wants = root / "etc/systemd/system/ssh.service.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "ssh-hostkeys.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/ssh-hostkeys.service")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)  # authorized_keys is per test bed, installed at up
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for f in root.glob(pattern):
            f.unlink()


def import_rootfs(root: Path, image: str, label: str) -> None:
    argv = ["podman", "import", "-q", "--change", f"LABEL {RECIPE_LABEL}={label}", "--change", 'CMD ["/sbin/init"]']
    imp = tar_pipe(root, ["."], [*argv, "-", image])
    if imp.returncode != 0:
        raise TestbedError(f"podman import of {root} failed ({imp.returncode}): {imp.stderr}")


def ensure_image(steps: Steps | None = None, *, force: bool = False, image: str = IMAGE) -> dict[str, Any]:
    """The node image ``image`` (IMAGE, SLURM_IMAGE or DYNAMO_IMAGE), built when missing or when its recipe
    changed. Returns a build record."""
    steps = steps or Steps("image")
    want = recipe_hash(image)
    t0 = time.monotonic()
    if not force and image_recipe_label(image) == want:
        return {"image": image, "recipe": want, "cached": True, "seconds": round(time.monotonic() - t0, 2)}
    workdir = image_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    # Two test beds coming up at once must not both debootstrap: one builds, the other waits.
    with open(workdir / "build.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and image_recipe_label(image) == want:
            return {
                "image": image,
                "recipe": want,
                "cached": True,
                "seconds": round(time.monotonic() - t0, 2),
            }
        return _build(workdir, want, steps, t0, image)


def _build(workdir: Path, want: str, steps: Steps, t0: float, image: str = IMAGE) -> dict[str, Any]:
    mirror = host_mirror()
    root = workdir / f"rootfs-{want}"
    remove_rootfs(root)
    log = workdir / "debootstrap.log"
    steps.say(f"building node image {image} (debootstrap {SUITE} from {mirror}; about a minute)")
    t = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages(image))}",
                "--components=main",
                SUITE,
                str(root),
                mirror,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    debootstrap_s = time.monotonic() - t
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        remove_rootfs(root)
        raise TestbedError(f"debootstrap failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    t = time.monotonic()
    prepare_rootfs(root)
    prepare_s = time.monotonic() - t
    t = time.monotonic()
    steps.say("importing the node image")
    try:
        import_rootfs(root, image, want)
    finally:
        remove_rootfs(root)
    import_s = time.monotonic() - t
    record = {
        "image": image,
        "recipe": want,
        "cached": False,
        "mirror": mirror,
        "debootstrap_s": round(debootstrap_s, 1),
        "prepare_s": round(prepare_s, 2),
        "import_s": round(import_s, 1),
        "seconds": round(time.monotonic() - t0, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (workdir / ("build.json" if image == IMAGE else f"build-{image.rsplit(':', 1)[-1]}.json")).write_text(
        json.dumps(record, indent=2) + "\n"
    )
    # Old images of this name lose their tag on import; remove them if nothing uses them.
    podman("image", "prune", "-f", "--filter", f"label={RECIPE_LABEL}", check=False)
    return record
