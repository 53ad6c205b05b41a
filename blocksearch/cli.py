"""blocksearch command line: ``blocksearch <verb> [options]``; ``blocksearch <verb> --help`` for each.

Here are ``main`` (logging, ``-q``, exit codes) and the table of verbs (COMMANDS); each verb's flags and handler
live in its module of commands/ (toy's in toy/cli.py). Bad input ends with one line on stderr, ``blocksearch:
error: ...`` (a flag the parser rejects: ``blocksearch <verb>: error: ...``), and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from blocksearch import __version__
from blocksearch.commands import adapt, bench, distill, evaluate, export, report, run, space, train
from blocksearch.commands.common import Parser, add_verbosity
from blocksearch.console import set_quiet
from blocksearch.errors import BlocksearchError
from blocksearch.toy import cli as toy

# verb -> its module: add_parser(subparsers) registers it and sets each (sub-)verb's handler; --help lists this order
COMMANDS = {"space": space, "run": run, "report": report, "export": export, "distill": distill, "train": train,
            "evaluate": evaluate, "adapt": adapt, "bench": bench, "toy": toy}
LIBRARY_VERBOSITY = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY",
                     "huggingface_hub": "HF_HUB_VERBOSITY"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet: choose one")
    quiet_libraries(args.verbose)
    if args.quiet:
        set_quiet()  # progress bars and progress lines off (console.py)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except BlocksearchError as err:
        print(f"blocksearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blocksearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `blocksearch ... | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a tool the pipe stopped


def quiet_libraries(verbose: bool) -> None:
    """Logging at INFO with -v, else WARNING; without -v, library warnings (deprecations, experimental
    APIs, optional packages such as accelerate) stay out of the output: Python warnings are ignored and
    diffusers / transformers / huggingface_hub log errors only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    warnings.simplefilter("ignore")
    for library, variable in LIBRARY_VERBOSITY.items():
        os.environ.setdefault(variable, "error")  # read when the library is imported
        if library in sys.modules:  # imported already (e.g. by a test): set it directly
            sys.modules[library].utils.logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    """The ``blocksearch`` parser: each verb of COMMANDS registers itself; ``-v`` / ``-q`` on every verb."""
    parser = Parser(
        prog="blocksearch",
        description="Find small, fast Stable Diffusion U-Nets by removing blocks and distilling "
                    "(BK-SDM, arXiv 2305.15798, as a multi-objective search).",
        epilog="Every command takes -v/--verbose and -q/--quiet, before or after its name, and -o where it writes "
               "files (-o/--out; run: -o/--runs-dir); 'blocksearch <command> --help' describes each. Bad input: one "
               "line on stderr and exit code 2.")
    parser.add_argument("--version", action="version", version=f"blocksearch {__version__}")
    verbs = parser.add_subparsers(title="commands", metavar="<command>")
    for command in COMMANDS.values():
        command.add_parser(verbs)
    add_verbosity(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())
