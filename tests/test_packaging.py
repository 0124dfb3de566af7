"""The Python side installs with plain pip and runs without ROS (for GPU training servers)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["src/eva_idm", "src/eva_planner", "src/eva_sim", "training"]


def test_pip_install_gives_a_working_eva_without_the_ros_workspace(tmp_path):
    sources = []
    for package in PACKAGES:  # copies, so pip's in-tree build leaves the checkout clean
        sources.append(shutil.copytree(ROOT / package, tmp_path / "src" / Path(package).name))
    prefix = tmp_path / "prefix"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--prefix", str(prefix), *map(str, sources)],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    site = prefix / Path(sysconfig.get_paths()["purelib"]).relative_to(sysconfig.get_paths()["data"])
    # Only the pip-installed packages and the third-party libraries: no install/ space, no ament index.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}"}
    version = subprocess.run([str(prefix / "bin" / "eva"), "--version"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "eva 0.1.0"
    probe = "import eva_idm.frames, eva_sim.processes, eva_training.cli, sys; print('eva_msgs' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert imported.stdout.strip() == "False", imported.stderr
