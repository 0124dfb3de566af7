# Source this file to use the workspace: `source scripts/env.sh`.
# It activates .venv, chains the colcon install space, makes the venv's ROS packages visible to
# the ament index, and keeps DDS discovery on this machine. Works from any directory.
_eva_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [ ! -x "$_eva_root/.venv/bin/python" ]; then
    echo "scripts/env.sh: no .venv in $_eva_root; run 'make setup' first" >&2
    return 1 2>/dev/null || exit 1
fi
# shellcheck source=/dev/null
source "$_eva_root/.venv/bin/activate"

# DDS discovery must never leave this machine (Fast DDS multicasts otherwise).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_DISTRO=jazzy

case ":${AMENT_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;; esac
case ":${CMAKE_PREFIX_PATH:-}:" in *":$VIRTUAL_ENV:"*) ;; *) export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}" ;; esac
if [ -f "$_eva_root/install/setup.bash" ]; then
    # shellcheck source=/dev/null
    source "$_eva_root/install/setup.bash"
fi

# The wheels' shared libraries live in site-packages/ros_*.libs; ros-wheels-bootstrapper would
# re-exec every Python to set this, so set it once here (faster, and friendlier to debuggers).
_eva_site="$("$VIRTUAL_ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
_eva_libs="$VIRTUAL_ENV/lib"
for _eva_dir in "$_eva_site"/ros_*.libs; do
    [ -d "$_eva_dir" ] && _eva_libs="$_eva_libs:$_eva_dir"
done
export LD_LIBRARY_PATH="$_eva_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export EVA_WORKSPACE="$_eva_root"
unset _eva_root _eva_site _eva_libs _eva_dir
