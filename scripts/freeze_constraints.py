"""Print pinned constraints for every distribution in the current venv (``make constraints``).

Uses installed distribution metadata rather than ``pip freeze``: the ROS wheels also install
egg-info names (``rclpy==7.1.5``) that are not PyPI names and could pull unrelated projects.
Local version labels are dropped (``torch==2.13.0``, not ``2.13.0+cpu``) so the pin also admits
the same version's CUDA build on a GPU machine.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

SKIP = {"pip"}
HEADER = """# Every distribution the workspace venv holds, pinned (pip -c). Regenerate with
# 'make constraints' after changing requirements/*.txt; keep torch at 2.13.0."""


def main() -> None:
    """Print the header and one ``name==version`` line per distribution, sorted by name."""
    pins = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        in_venv = Path(str(distribution.locate_file(""))).resolve().is_relative_to(Path(sys.prefix).resolve())
        if name and name.lower() not in SKIP and in_venv:  # not the workspace's own colcon-built packages
            pins[name.lower()] = f"{name}=={distribution.version.split('+')[0]}"
    print(HEADER)
    for key in sorted(pins):
        print(pins[key])


if __name__ == "__main__":
    main()
