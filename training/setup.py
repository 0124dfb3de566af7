"""Build script of eva_training: the offline jobs and the ``eva`` command-line tool."""

from setuptools import find_packages, setup

setup(
    name="eva_training",
    version="0.1.0",
    description="EVA offline jobs: data preparation, IDM training, SFT, Flow-GRPO, evaluation, and the eva CLI.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["tests"]),
    install_requires=["eva_idm", "eva_planner", "eva_sim", "numpy", "pyyaml", "tqdm", "rich", "rosbags"],
    zip_safe=False,
    entry_points={"console_scripts": ["eva = eva_training.cli:main"]},
)
