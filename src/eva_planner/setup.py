"""Build script: an ament_python package for colcon, and a plain pip-installable package."""

from setuptools import find_packages, setup

PACKAGE = "eva_planner"

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
    ],
    install_requires=[
        "eva_idm", "numpy", "diffusers", "transformers", "peft", "accelerate", "safetensors", "torch>=2.4",
    ],
    zip_safe=False,
    entry_points={"console_scripts": []},
)
