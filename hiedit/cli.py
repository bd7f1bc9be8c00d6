"""Command-line entry point: ``python -m hiedit <group> <command>``.

Each command group lives in ``hiedit/commands/<group>.py`` and exposes ``register(subparsers)``;
heavy imports (torch, transformers) happen inside the command functions so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from hiedit.errors import HiEditError

COMMAND_GROUPS = ("data", "model", "train", "evaluate", "bench", "report", "baselines")
# Failures of the machine rather than of the code: their message (which names the file or folder)
# is all a user needs, so they are printed like HiEditError instead of as a traceback.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hiedit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="group", required=True)
    for name in COMMAND_GROUPS:
        try:
            module = importlib.import_module(f"hiedit.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hiedit.commands.{name}":
                continue  # group not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except HiEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
