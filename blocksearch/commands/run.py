"""``blocksearch run``: the search, an Optuna study whose trials run on Ray Tune (docs/search.md); its flags are
run_config.RUN_FLAGS, one per SearchConfig field."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from blocksearch.commands.run_config import RUN_FLAGS, RUN_RENAMED, RUN_SHORT, dump_run_config, read_run_config
from blocksearch.console import add_renamed
from blocksearch.study import SearchConfig


def add_parser(verbs) -> None:
    """Register ``run``: ``--config``, one flag per RUN_FLAGS row, ``--print-config``."""
    p = verbs.add_parser(
        "run", help="search a space: Optuna multi-objective study run on Ray Tune",
        description="Search a space for Pareto-optimal students (FID, params, latency by default): an "
                    "Optuna study in persistent storage, each trial (surgery -> distillation -> "
                    "evaluation) run by Ray Tune. Re-running the same command resumes the study: "
                    "finished trials are kept, an architecture is never trained twice, and the BK-SDM "
                    "designs are evaluated once per study; a resume with settings that would make the "
                    "trials incomparable is refused. A real teacher's inputs are checked before Ray starts. "
                    "Example: blocksearch run --space unet_blocks")
    p.add_argument("--config", metavar="FILE", help="a YAML file of these flags (keys: flag names, dashes or "
                                                    "underscores; null: the default; paths as on the command line, "
                                                    "relative to the working directory; --print-config writes one); "
                                                    "flags on the command line override it")
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    for name, kwargs in RUN_FLAGS:
        default = defaults[name]
        if isinstance(default, tuple):  # --objectives: shown and parsed as comma-separated text
            default = ",".join(default)
        shown = "" if default is None or default is False else f" (default: {default})"
        # not given: absent (SUPPRESS), so that --config can tell a flag on the command line from a default
        flags = ([RUN_SHORT[name]] if name in RUN_SHORT else []) + ["--" + name.replace("_", "-")]
        kwargs = {**kwargs, "help": kwargs["help"].replace("%", "%%") + shown}
        if name in RUN_RENAMED:
            add_renamed(p, *flags, old="--" + RUN_RENAMED[name].replace("_", "-"), dest=name,
                        default=argparse.SUPPRESS, **kwargs)
        else:
            p.add_argument(*flags, dest=name, default=argparse.SUPPRESS, **kwargs)
    p.add_argument("--print-config", action="store_true",
                   help="print the settings the flags and --config resolve to, as a YAML file --config accepts, and "
                        "exit without running anything")
    p.set_defaults(handler=main)


def main(args) -> int:
    """The flags over ``--config`` over SearchConfig's defaults; the search, or ``--print-config``'s file
    (search/launch.py)."""
    given = {name: getattr(args, name) for name, _ in RUN_FLAGS if hasattr(args, name)}
    from_file = read_run_config(args.config) if args.config else {}
    cfg = SearchConfig(**{**from_file, **given}, command=" ".join(["blocksearch"] + sys.argv[1:]))
    from blocksearch.search.launch import launch  # the search driver: torch, Optuna, Ray once it has work

    return launch(cfg, print_config=dump_run_config if args.print_config else None)
