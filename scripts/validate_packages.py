"""Validate every package.xml under the given directories with catkin_pkg (no network access).

catkin_pkg checks the format-3 rules (required fields, dependency kinds, licence, maintainers)
without fetching the XSD; warnings count as errors so a sloppy manifest fails early.
"""

from __future__ import annotations

import sys
from pathlib import Path

from catkin_pkg.package import InvalidPackage, parse_package


def validate(package_xml: Path) -> list[str]:
    """Return the problems found in one manifest (empty when it is valid)."""
    warnings: list[str] = []
    try:
        package = parse_package(str(package_xml), warnings=warnings)
    except InvalidPackage as error:
        return [str(error)]
    problems = list(warnings)
    if package.name != package_xml.parent.name:
        problems.append(f"<name>{package.name}</name> differs from its directory {package_xml.parent.name!r}")
    return problems


def main(roots: list[str]) -> int:
    """Validate all manifests below ``roots``; print each problem with its file."""
    manifests = sorted(path for root in roots for path in Path(root).rglob("package.xml"))
    if not manifests:
        print(f"no package.xml found under {roots}", file=sys.stderr)
        return 1
    failed = False
    for manifest in manifests:
        for problem in validate(manifest):
            print(f"{manifest}: {problem}", file=sys.stderr)
            failed = True
    print(f"{len(manifests)} package.xml files checked: {'INVALID' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["src"]))
