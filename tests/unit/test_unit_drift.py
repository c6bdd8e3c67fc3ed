"""roles/multinode/tasks/unit_drift.yml: a unit whose files changed after it started is reported.

A play stopped after writing a unit or its environment file and before the restart handler leaves
the service on its old settings; the next run finds the files unchanged. The task file compares
`systemctl show` (native) or `docker inspect` (docker) with the files' mtimes (real files, times set
with os.utime), as ray_head, ray_worker, vllm_serve and status.yml use it. A fake `systemctl` and
`docker` on PATH print what each case gives.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from ansible_run import ROOT, ansible_playbook

T0 = 1_796_022_000  # the unit started here

PLAYBOOK = """\
- name: Compare
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Drift of {unit}
      ansible.builtin.include_tasks: {root}/roles/multinode/tasks/unit_drift.yml
      vars:
        multinode_drift_unit: "{{{{ item.unit }}}}"
        multinode_drift_paths: "{{{{ item.paths }}}}"
      loop: {cases}
    - name: Write
      ansible.builtin.copy:
        dest: "{out}"
        mode: "0644"
        content: "{{{{ multinode_units_drifted | to_json }}}}"
"""


def drifted(tmp_path: Path, units: dict[str, tuple[str, int, list[int]]], runtime: str = "native") -> dict[str, bool]:
    """units: name -> (ActiveState, started at or 0 for never, mtimes of its files).

    docker: ActiveState `active` is a running container, anything else a stopped one; 0 for never
    is no such container (docker inspect fails).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    inspect = {
        u: f"{'true' if state == 'active' else 'false'} {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.123456789Z"
        for u, (state, t, _) in units.items()
        if t
    }
    (bin_dir / "docker").write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        f"INSPECT = {inspect!r}\n"
        "assert sys.argv[1:4] == ['inspect', '--format', '{{.State.Running}} {{.State.StartedAt}}'], sys.argv\n"
        "if sys.argv[4] not in INSPECT:\n"
        "    sys.exit('Error: No such object: ' + sys.argv[4])\n"
        "print(INSPECT[sys.argv[4]])\n"
    )
    (bin_dir / "docker").chmod(0o755)
    show = {
        u: f"ActiveState={state}\nActiveEnterTimestamp={'@' + str(t) if t else ''}"
        for u, (state, t, _) in units.items()
    }
    (bin_dir / "systemctl").write_text(
        "#!/usr/bin/env python3\nimport sys\n"
        f"SHOW = {show!r}\n"
        "assert sys.argv[1:3] == ['show', '--timestamp=unix'], sys.argv\n"
        "assert sys.argv[3:5] == ['--property=ActiveState', '--property=ActiveEnterTimestamp'], sys.argv\n"
        "print(SHOW[sys.argv[5]])\n"
    )
    (bin_dir / "systemctl").chmod(0o755)
    cases = []
    for u, (_, _, mtimes) in units.items():
        paths = []
        for i, m in enumerate(mtimes):
            f = tmp_path / f"{u}.{i}"
            f.write_text("x")
            os.utime(f, (m, m))
            paths.append(str(f))
        cases.append({"unit": u, "paths": paths})
    out = tmp_path / "out.json"
    (tmp_path / "pb.yml").write_text(
        PLAYBOOK.format(root=ROOT, out=out, unit="{{ item.unit }}", cases=json.dumps(cases))
    )
    proc = ansible_playbook(
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"multinode_runtime={runtime}",
        str(tmp_path / "pb.yml"),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("state", "started", "mtimes", "expected"),
    [
        # the unit was rewritten after it started and the restart handler never ran
        ("active", T0, [T0 - 600, T0 + 30], True),
        ("active", T0, [T0 + 30, T0 - 600], True),
        # the usual order: files written, then the unit (re)started
        ("active", T0, [T0 - 600, T0 - 1], False),
        # written in the same second as the start: not later
        ("active", T0, [T0, T0], False),
        # not running: starting it reads the new files, nothing to restart
        ("failed", T0, [T0 + 30, T0 + 30], False),
        ("inactive", 0, [T0 + 30, T0 + 30], False),
        ("active", 0, [T0 + 30, T0 + 30], False),
    ],
)
@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_drift(tmp_path: Path, runtime: str, state: str, started: int, mtimes: list[int], expected: bool) -> None:
    assert drifted(tmp_path, {"ray-head": (state, started, mtimes)}, runtime) == {"ray-head": expected}


def test_each_unit_keeps_its_own_answer(tmp_path: Path) -> None:
    """ray-head and vllm run on the same head: one's answer must not leak into the other's."""
    r = drifted(
        tmp_path,
        {"ray-head": ("active", T0, [T0 + 30]), "vllm": ("active", T0 + 60, [T0 + 30])},
    )
    assert r == {"ray-head": True, "vllm": False}
