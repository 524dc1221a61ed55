"""README's main job: the last command of its install block, `fedmeta simulate` with no arguments, finishes on
a CPU and ends with the held-out factories' comparison of every method it trained, measured in one run."""

from __future__ import annotations

import subprocess
import sysconfig
from pathlib import Path

from tests.support.docs import example

FEDMETA = str(Path(sysconfig.get_path("scripts")) / "fedmeta")


def test_fedmeta_simulate_with_no_arguments_ends_with_the_held_out_comparison(tmp_path):
    (install,) = example("README.md", "bash", marker="run by .ci/run, tests/test_main_job.py")
    command = install.split("&&")[-1].split()
    assert command == ["fedmeta", "simulate"]
    done = subprocess.run([FEDMETA, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={"COLUMNS": "200", "PATH": str(Path(FEDMETA).parent) + ":/usr/bin:/bin"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # Flower's deprecated entry point and Ray's driver each once greeted the user with a warning banner.
    assert "DEPRECATED" not in output and "Warning" not in output, output[:3000]
    for row in ("maml (meta-learned, adapted)", "fedavg + fine-tune", "local only (from scratch)"):
        assert row in output, output[-3000:]
    assert list(tmp_path.glob("runs/simulate-*/maml/model/model.json")), sorted(tmp_path.rglob("*"))[:20]
