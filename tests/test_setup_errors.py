"""Setup and tools fail with a message that says what to do, never a bare traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_names_a_missing_python_and_the_fix():
    result = subprocess.run(["bash", "scripts/setup_workspace.sh"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": "no-such-python3"}, timeout=60)
    assert result.returncode == 1
    assert "'no-such-python3' not found" in result.stderr and "PYTHON=" in result.stderr
    assert "Traceback" not in result.stderr


MANIFEST = (
    '<?xml version="1.0"?>\n<package format="3"><name>{name}</name><version>{version}</version>'
    "<description>d</description><maintainer email='dev@example.org'>m</maintainer>"
    "<license>Apache-2.0</license></package>\n"
)


def test_package_xml_validation_names_the_file_and_the_problem(tmp_path):
    for directory, name, version in [("bad_version", "bad_version", "0.1"), ("misnamed", "other_name", "0.1.0")]:
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "package.xml").write_text(MANIFEST.format(name=name, version=version))
    result = subprocess.run([sys.executable, "scripts/validate_packages.py", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'bad_version/package.xml' in result.stderr and 'version "0.1"' in result.stderr
    assert "misnamed/package.xml: <name>other_name</name> differs from its directory 'misnamed'" in result.stderr


def test_workspace_manifests_are_valid():
    result = subprocess.run([sys.executable, "scripts/validate_packages.py", "src"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "5 package.xml files checked: ok" in result.stdout


def test_transport_probe_rejects_a_bad_frame_size_with_a_message(ros_domain):
    from eva_sim.processes import find_executable, ros_environment

    probe = find_executable("eva_sim", "transport_probe")
    result = subprocess.run([str(probe), "send", "--kind", "plan", "--frames", "0"], capture_output=True, text=True,
                            env=ros_environment(ros_domain), timeout=60)
    assert result.returncode == 2
    assert "transport_probe send: error: num_frames/height/width" in result.stderr
    assert "Traceback" not in result.stderr


def skip_arguments(tmp_path: Path, underlay: str) -> str:
    """What setup_workspace.sh's skip_installed_control_msgs prints for an underlay AMENT_PREFIX_PATH."""
    script = (ROOT / "scripts" / "setup_workspace.sh").read_text()
    function = script[script.index("skip_installed_control_msgs() {"):]
    function = function[:function.index("\n}\n") + 3]
    result = subprocess.run(["bash", "-c", function + "skip_installed_control_msgs"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "ROOT": str(ROOT), "VENV": str(tmp_path / "venv"),
                                 "UNDERLAY_PREFIX_PATH": underlay}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_control_msgs_stand_in_is_built_only_where_no_control_msgs_is_installed(tmp_path):
    robot = tmp_path / "opt_ros_jazzy"
    (robot / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (robot / "share" / "ament_index" / "resource_index" / "packages" / "control_msgs").touch()
    assert skip_arguments(tmp_path, f"{tmp_path / 'other'}:{robot}") == "--packages-skip control_msgs"
    assert skip_arguments(tmp_path, str(tmp_path / "other")) == ""
    assert skip_arguments(tmp_path, str(ROOT / "install" / "control_msgs")) == ""  # our own stand-in, built before
