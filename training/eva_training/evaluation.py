"""``eva eval``: offline evaluations (``idm`` now; world-model executability and WPE later)."""

from __future__ import annotations

import argparse

from eva_training import eval_idm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``eva eval idm --checkpoint DIR --data DIR [...]``."""
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    idm = jobs.add_parser("idm", help="IDM accuracy, reward separation on artifact videos, gate calibration",
                          description=eval_idm.__doc__.split("\n\n")[0])
    eval_idm.add_arguments(idm)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen evaluation."""
    return eval_idm.run(args)
