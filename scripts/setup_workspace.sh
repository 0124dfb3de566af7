#!/usr/bin/env bash
# Set up the workspace from nothing, without root: a .venv with ROS 2 Jazzy from PyPI wheels and
# the project's pinned Python dependencies, the fix for the wheels' hard-coded CMake paths, and a
# colcon build into install/. Idempotent: a re-run skips pip when requirements are unchanged and
# lets colcon rebuild only what changed.
#
#   scripts/setup_workspace.sh            # or: make setup
#   PYTHON=python3.12 scripts/setup_workspace.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNDERLAY_PREFIX_PATH="${AMENT_PREFIX_PATH:-}"  # a robot's sourced ROS installation, before the venv replaces it
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }
START=$(date +%s)

check_prerequisites() {
    step "Checking prerequisites"
    command -v "$PYTHON" >/dev/null || fail "'$PYTHON' not found. Install Python 3.10-3.13 (with headers) or set PYTHON=/path/to/python3."
    "$PYTHON" - <<'EOF' || fail "Python 3.10-3.13 with development headers is required (ROS 2 Jazzy wheels exist for cp310-cp313). On Debian/Ubuntu: apt-get install python3-dev python3-venv."
import os, sys, sysconfig
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    sys.exit(f"  found Python {sys.version.split()[0]}")
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
if not os.path.exists(header):
    sys.exit(f"  missing {header}")
EOF
    command -v cmake >/dev/null || fail "cmake not found (>= 3.16 builds eva_msgs). On Debian/Ubuntu: apt-get install cmake."
    command -v c++ >/dev/null || fail "no C++ compiler found (rosidl generates C/C++ typesupport). On Debian/Ubuntu: apt-get install g++."
    command -v make >/dev/null || fail "make not found. On Debian/Ubuntu: apt-get install make."
    echo "python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), $(cmake --version | head -1), $(c++ --version | head -1)"
}

requirements_hash() {
    cat requirements/ros.txt requirements/python.txt requirements/constraints.txt | sha256sum | cut -d' ' -f1
}

install_python_packages() {
    if [ ! -x "$VENV/bin/python" ]; then
        step "Creating $VENV"
        "$PYTHON" -m venv "$VENV" || fail "could not create a venv; on Debian/Ubuntu: apt-get install python3-venv."
    fi
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(requirements_hash)" ]; then
        step "Python packages are up to date (requirements unchanged)"
        return
    fi
    step "Installing ROS 2 Jazzy wheels and Python dependencies (pinned; first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=25" \
        || fail "could not upgrade pip; is the package index reachable?"
    "$VENV/bin/python" -m pip install --quiet --progress-bar off \
        -c requirements/constraints.txt -r requirements/ros.txt -r requirements/python.txt \
        || fail "pip install failed (see above). A 'No matching distribution' error means a pinned wheel is missing for this Python or platform: ROS 2 Jazzy wheels exist for CPython 3.10-3.13 on manylinux x86_64."
    "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" \
        || fail "torch is not 2.13.0; refusing to continue (requirements/constraints.txt pins it)."
    requirements_hash > "$STAMP"
}

fix_wheel_cmake_paths() {
    # The Jazzy message wheels were built under /opt/python/cp3XY and export that include path
    # from their CMake targets; CMake refuses non-existent include paths at generate time.
    step "Pointing the ROS wheels' CMake exports at this Python"
    local pyinc npinc
    pyinc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    npinc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
    { grep -rlZ --include='*.cmake' '/opt/python/cp3' "$VENV/share" || true; } | xargs -0 -r sed -i \
        -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$pyinc#g" \
        -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$npinc#g"
}

validate_package_xml() {
    step "Validating package.xml files"
    "$VENV/bin/python" scripts/validate_packages.py src || fail "a package.xml is invalid (see above)."
}

# src/control_msgs stands in for ros2_control's control_msgs where none is installed; a robot's
# own (apt, sourced before this script) must never be shadowed by it.
skip_installed_control_msgs() {
    local prefix
    for prefix in ${UNDERLAY_PREFIX_PATH//:/ } "$VENV"; do
        [[ "$prefix" == "$ROOT/install"* ]] && continue  # the stand-in itself, from an earlier build
        if [ -e "$prefix/share/ament_index/resource_index/packages/control_msgs" ]; then
            echo "control_msgs is installed in $prefix: the stand-in in src/control_msgs is not built" >&2
            echo "--packages-skip control_msgs"
            return
        fi
    done
}

colcon_build() {
    step "Building the workspace with colcon"
    # colcon never deletes installed files; drop the Python packages' installed modules so a
    # module removed from src cannot linger in install/ (they are reinstalled in seconds).
    rm -rf install/eva_*/lib/python3*/site-packages/eva_{idm,planner,sim,training}
    # shellcheck source=/dev/null
    source "$VENV/bin/activate"
    local skip
    skip="$(skip_installed_control_msgs)"
    export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
    # shellcheck disable=SC2086 # $skip is empty or two words
    colcon --log-base build/log build --base-paths src training --build-base build --install-base install $skip \
        --event-handlers console_cohesion- console_stderr- summary+ status- \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
        || { tail -n 40 build/log/latest_build/*/stderr.log >&2
             fail "colcon build failed (errors above); the per-package logs are under build/log/latest_build/."; }
}

check_prerequisites
install_python_packages
fix_wheel_cmake_paths
validate_package_xml
colcon_build
step "Workspace ready in $(elapsed). Use it with: source scripts/env.sh"
