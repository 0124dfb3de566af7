"""Build script: an ament_python package for colcon, and a plain pip-installable package."""

from setuptools import find_packages, setup

PACKAGE = "eva_sim"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Headless MuJoCo aloha-agilex robot, process harness and ROS 2 transport probe.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "tests"]),
    # The vendored MuJoCo model (third-party data with its provenance and licence notes).
    package_data={"eva_sim": ["assets/aloha_agilex/*.xml", "assets/aloha_agilex/*.urdf", "assets/aloha_agilex/*.md",
                              "assets/aloha_agilex/meshes/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=["eva_idm", "numpy", "mujoco", "h5py", "opencv-python-headless", "tqdm"],
    zip_safe=False,
    entry_points={"console_scripts": [
        "transport_probe = eva_sim.ros.transport_probe:main",
        "sim_robot = eva_sim.ros.sim_robot:main",
    ]},
)
