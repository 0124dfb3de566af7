"""Build script: an ament_python package for colcon, and a plain pip-installable package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "eva_planner"
# The planner node's parameter files (config/planner*.yaml) install to share/eva_planner/config
# from a workspace build (a copy of this directory alone has none).
CONFIGS = sorted(glob("../../config/planner*.yaml"))

setup(
    name=PACKAGE,
    version="0.1.0",
    description="EVA video world model (Wan2.1 I2V through diffusers), best-of-N planning and the planner node.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", CONFIGS),
    ],
    install_requires=[
        "eva_idm", "numpy", "diffusers", "transformers", "peft", "accelerate", "safetensors", "torch>=2.4",
    ],
    zip_safe=False,
    entry_points={"console_scripts": ["planner_node = eva_planner.ros.planner_node:main"]},
)
