"""Build script: an ament_python package for colcon, and a plain pip-installable package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "eva_idm"
# The workspace's config/embodiments/*.yaml is the single source of embodiment limits; installs
# built from the workspace carry a copy in share/ (a copy of this directory alone has none).
EMBODIMENTS = sorted(glob("../../config/embodiments/*.yaml"))
# The stack's parameter files and launch files, so that `ros2 launch eva_idm sim.launch.xml` finds
# them through $(find-pkg-share eva_idm) on a robot.
CONFIGS = sorted(glob("../../config/*.yaml"))
LAUNCH_FILES = sorted(glob("../../launch/*.launch.xml"))

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Inverse dynamics model, EVA executability reward, plan-to-motion gate and their ROS 2 nodes.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config/embodiments", EMBODIMENTS),
        (f"share/{PACKAGE}/config", CONFIGS),
        (f"share/{PACKAGE}/launch", LAUNCH_FILES),
    ],
    install_requires=[
        "numpy", "scipy", "opencv-python-headless", "pyyaml", "h5py", "safetensors", "tqdm", "torch>=2.4",
    ],
    zip_safe=False,
    entry_points={"console_scripts": [
        "idm_node = eva_idm.ros.idm_node:main",
        "controller_bridge = eva_idm.ros.controller_bridge:main",
        "lifecycle_manager = eva_idm.ros.lifecycle_manager:main",
    ]},
)
