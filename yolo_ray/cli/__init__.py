"""The `yolo-ray` command: a registry of subcommands; argparse lives only in this package."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from .. import __version__
from ..errors import YoloRayError

LOGGER = logging.getLogger("yolo_ray")
Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: decorate its runner; `add_<name>_args` defines its flags."""
    def wrap(fn: Command) -> Command:
        COMMANDS[name] = (ARGS[name], fn, help_text)
        return fn
    return wrap


ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def args_for(name: str):
    """Register the argument builder of a subcommand."""
    def wrap(fn: Callable[[argparse.ArgumentParser], None]):
        ARGS[name] = fn
        return fn
    return wrap


# ------------------------------------------------------------------ entry point
def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    from . import (cluster_cmds, evolve_cmds, prune_cmds,  # noqa: F401  (register commands)
                   train_cmds)

    parser = argparse.ArgumentParser(prog="yolo-ray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"yolo-ray {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_args, fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the subcommand; user errors print one line and return 2."""
    # Before torch loads OpenMP: sleeping (not spinning) idle threads keep CPU training from
    # collapsing when other processes share the cores; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)
    try:
        return int(args.func(args) or 0)
    except YoloRayError as e:
        print(f"yolo-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("yolo-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
