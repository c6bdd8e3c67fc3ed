"""The stub apt repositories of the prepare phase's tests: real names, dependencies, signatures,
and the stub programs behaving as the real ones where the roles rely on them."""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from multinode_vllm import PROJECT_DIR
from multinode_vllm.testbed import fake_nvml, stub_apt

ROLES = Path(PROJECT_DIR) / "roles"


def stanzas(packages: Path) -> list[dict[str, str]]:
    out = []
    for block in packages.read_text().strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        out.append(fields)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = stub_apt.missing_tools()
    assert not missing, f"install {missing} (scripts/bootstrap installs dpkg-dev and gnupg)"
    dest = tmp_path_factory.mktemp("stub") / "apt"
    role_vars = stub_apt.build(dest)
    return {"dest": dest, "vars": role_vars}


def test_cuda_repository_carries_the_debian12_names_in_two_versions(repo: dict[str, Any]) -> None:
    pkgs = stanzas(repo["dest"] / "cuda" / "Packages")
    versions: dict[str, set[str]] = {}
    for p in pkgs:
        versions.setdefault(p["Package"], set()).add(p["Version"])
    for name in (
        "cuda-drivers-550",
        "nvidia-driver",
        "nvidia-kernel-open-dkms",
        "nvidia-kernel-dkms",
        "nvidia-smi",
        "libnvidia-ml1",
        "nvidia-persistenced",
        "nvidia-fabricmanager-550",
    ):
        assert versions[name] == {"550.127.05-1", "550.144.03-1"}, name
    assert versions["cuda-keyring"] == {"1.1-1"}
    drivers = next(p for p in pkgs if p["Package"] == "cuda-drivers-550" and p["Version"] == "550.144.03-1")
    assert "nvidia-kernel-dkms (= 550.144.03-1) | nvidia-kernel-open-dkms (= 550.144.03-1)" in drivers["Depends"]
    # NVIDIA's version locking pins source packages: the driver family shares one source
    assert drivers["Source"] == "cuda-drivers"
    assert {p["Source"] for p in pkgs if p["Package"] in ("nvidia-driver", "nvidia-smi")} == {"nvidia-graphics-drivers"}
    assert all(p["Filename"].startswith("./") for p in pkgs)  # a flat repository, like NVIDIA's


def test_toolkit_and_docker_repositories_have_the_real_chain(repo: dict[str, Any]) -> None:
    tk = {p["Package"]: p for p in stanzas(repo["dest"] / "libnvidia-container" / "Packages")}
    assert set(tk) == {
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container-tools",
        "libnvidia-container1",
    }
    assert "nvidia-container-toolkit-base (= 1.17.8-1)" in tk["nvidia-container-toolkit"]["Depends"]
    assert "libnvidia-container1 (>= 1.17.8-1)" in tk["libnvidia-container-tools"]["Depends"]
    dk = {
        p["Package"]: p
        for p in stanzas(repo["dest"] / "docker" / "dists" / "bookworm" / "stable" / "binary-amd64" / "Packages")
    }
    assert set(dk) == {"docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"}
    assert dk["docker-ce"]["Version"] == "5:27.5.1-1~debian.12~bookworm"
    assert dk["docker-ce"]["Filename"].startswith("pool/stable/amd64/")


def test_repositories_are_signed_by_the_key_the_keyring_ships(repo: dict[str, Any], tmp_path: Path) -> None:
    dest = repo["dest"]
    subprocess.run(["dpkg-deb", "-x", str(dest / "cuda" / "cuda-keyring_1.1-1_all.deb"), str(tmp_path)], check=True)
    keyring = tmp_path / "usr" / "share" / "keyrings" / "cuda-archive-keyring.gpg"
    source = (tmp_path / "etc" / "apt" / "sources.list.d" / "cuda-debian12-x86_64.list").read_text()
    assert source == f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] file://{dest}/cuda/ /\n"
    assert (
        "Pin: release l=NVIDIA CUDA"
        in (tmp_path / "etc" / "apt" / "preferences.d" / "cuda-repository-pin-600").read_text()
    )
    for release in (
        dest / "cuda" / "InRelease",
        dest / "libnvidia-container" / "InRelease",
        dest / "docker" / "dists" / "bookworm" / "InRelease",
    ):
        proc = subprocess.run(
            ["gpgv", "--keyring", str(keyring), str(release)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
    # the Release file's hashes are those of the index
    release = (dest / "cuda" / "Release").read_text()
    digest = hashlib.sha256((dest / "cuda" / "Packages").read_bytes()).hexdigest()
    assert f" {digest} " in release
    assert "Label: NVIDIA CUDA" in release


def test_a_tampered_index_fails_the_signature(repo: dict[str, Any], tmp_path: Path) -> None:
    dest = repo["dest"]
    subprocess.run(["dpkg-deb", "-x", str(dest / "cuda" / "cuda-keyring_1.1-1_all.deb"), str(tmp_path)], check=True)
    forged = tmp_path / "InRelease"
    forged.write_text((dest / "cuda" / "InRelease").read_text().replace("Label: NVIDIA CUDA", "Label: NVIDIA CUDB"))
    keyring = tmp_path / "usr" / "share" / "keyrings" / "cuda-archive-keyring.gpg"
    proc = subprocess.run(["gpgv", "--keyring", str(keyring), str(forged)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0


def test_packages_ship_what_the_roles_rely_on(repo: dict[str, Any]) -> None:
    def listing(deb: Path) -> str:
        return subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout

    cuda = repo["dest"] / "cuda"
    assert "./lib/systemd/system/nvidia-fabricmanager.service" in listing(
        cuda / "nvidia-fabricmanager-550_550.127.05-1_amd64.deb"
    )
    assert "./lib/systemd/system/nvidia-persistenced.service" in listing(
        cuda / "nvidia-persistenced_550.127.05-1_amd64.deb"
    )
    postinst = subprocess.run(
        ["dpkg-deb", "-I", str(cuda / "nvidia-kernel-open-dkms_550.127.05-1_amd64.deb"), "postinst"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "touch /var/run/reboot-required" in postinst
    docker = repo["dest"] / "docker" / "pool" / "stable" / "amd64"
    assert "./lib/systemd/system/docker.service" in listing(docker / "docker-ce_27.5.1-1~debian.12~bookworm_amd64.deb")


def test_role_variables_are_real_role_variables(repo: dict[str, Any]) -> None:
    defaults: dict[str, Any] = {}
    for role in ("nvidia_driver", "docker", "nvidia_container_toolkit"):
        defaults.update(yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()))
    assert set(repo["vars"]) <= set(defaults), set(repo["vars"]) - set(defaults)
    assert repo["vars"]["nvidia_driver_cuda_keyring_url"] == f"file://{repo['dest']}/cuda/cuda-keyring_1.1-1_all.deb"


def test_a_rebuild_keeps_the_signing_key(repo: dict[str, Any]) -> None:
    before = (repo["dest"] / "key.asc").read_text()
    stub_apt.build(repo["dest"])
    assert (repo["dest"] / "key.asc").read_text() == before


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(stub_apt.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="dpkg-deb, dpkg-scanpackages, gpg: apt-get install dpkg-dev gnupg"):
        stub_apt.build(tmp_path / "apt")


def test_cli_refuses_a_version_of_another_branch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        stub_apt.main([str(tmp_path / "apt"), "--branch", "550", "--driver-version", "580.95.05"])
    assert exc.value.code == 2
    assert "every version must be of --branch 550" in capsys.readouterr().err


# --- the stub programs -----------------------------------------------------------------------


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, check=False, env={**os.environ, **env}
    )


def test_nvidia_ctk_registers_the_runtime_and_keeps_the_rest(tmp_path: Path) -> None:
    ctk = script(tmp_path, "nvidia-ctk", stub_apt.NVIDIA_CTK.replace("@TOOLKIT_VERSION@", "1.17.8-1"))
    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps({"data-root": "/data", "log-opts": {"max-file": "3"}}))
    proc = run([str(ctk), "runtime", "configure", "--runtime=docker", f"--config={cfg}"])
    assert proc.returncode == 0, proc.stderr
    assert "Wrote updated config" in proc.stderr
    data = json.loads(cfg.read_text())
    assert data == {
        "data-root": "/data",
        "log-opts": {"max-file": "3"},
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    missing = tmp_path / "absent" / "daemon.json"
    assert run([str(ctk), "runtime", "configure", "--runtime=docker", f"--config={missing}"]).returncode == 0
    assert "nvidia" in json.loads(missing.read_text())["runtimes"]
    cfg.write_text("{not json")
    bad = run([str(ctk), "runtime", "configure", "--runtime=docker", f"--config={cfg}"])
    assert bad.returncode == 1 and "unable to load config" in bad.stderr


def test_docker_cli_needs_the_loaded_runtime_and_the_hook(tmp_path: Path) -> None:
    docker = script(tmp_path, "docker", stub_apt.DOCKER_CLI)
    loaded = tmp_path / "loaded.json"
    argv = [str(docker), "run", "--rm", "--runtime=nvidia", "--gpus", "all", "ubuntu:24.04", "echo", "in a container"]
    proc = run(argv, DOCKER_STUB_LOADED=str(loaded))
    assert proc.returncode == 1 and "Is the docker daemon running?" in proc.stderr
    loaded.write_text("{}")  # the daemon started before the runtime was registered
    proc = run(argv, DOCKER_STUB_LOADED=str(loaded))
    assert proc.returncode == 125 and "unknown or invalid runtime name: nvidia" in proc.stderr
    loaded.write_text(json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}))
    proc = run(argv, DOCKER_STUB_LOADED=str(loaded), PATH="/usr/bin:/bin")
    assert proc.returncode == 125 and 'could not select device driver "" with capabilities: [[gpu]]' in proc.stderr
    hooks = tmp_path / "bin"
    hooks.mkdir()
    script(hooks, "nvidia-container-runtime-hook", "#!/bin/sh\nexit 0\n")
    proc = run(argv, DOCKER_STUB_LOADED=str(loaded), PATH=f"{hooks}:/usr/bin:/bin")
    assert proc.returncode == 0 and proc.stdout == "in a container\n", proc.stderr


def test_nvidia_smi_lists_the_gpus_of_the_nvml_library(tmp_path: Path) -> None:
    lib = fake_nvml.build_library(tmp_path / "lib")
    cfg = fake_nvml.write_config(tmp_path / "nvml.json", fake_nvml.make_config(gpu_count=3, seed="unit"))
    smi = script(tmp_path, "nvidia-smi", stub_apt.NVIDIA_SMI)
    env = {"LD_LIBRARY_PATH": str(Path(lib).parent), "FAKE_NVML_CONFIG": str(cfg)}
    proc = run([str(smi), "-L"], **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    uuids = [g["uuid"] for g in json.loads(Path(cfg).read_text())["gpus"]]
    assert lines == [f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: {u})" for i, u in enumerate(uuids)]
    if ctypes.util.find_library("nvidia-ml") is None:  # no driver on this machine: as nvidia-smi without one
        no_driver = run([str(smi), "-L"], LD_LIBRARY_PATH=str(tmp_path / "nowhere"))
        assert no_driver.returncode == 9 and "couldn't communicate with the NVIDIA driver" in no_driver.stdout
