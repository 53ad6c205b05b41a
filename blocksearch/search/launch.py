"""``blocksearch run``'s work once its flags are read (commands/run.py): the search (driver.run_search), or
``--print-config``'s settings as the driver resolves them and what ``--score`` resolves to, nothing run."""

from __future__ import annotations

import os
import sys
from typing import Callable

from blocksearch.console import quiet
from blocksearch.recipe.distill import DistillConfig
from blocksearch.search import driver
from blocksearch.search.selection import first_stage
from blocksearch.study import SearchConfig
from blocksearch.teachers import is_toy


def launch(cfg: SearchConfig, print_config: Callable[[SearchConfig], str] | None = None) -> int:
    """The search of ``cfg``; the exit code (1: no trial completed, said last in one line). With ``print_config``
    (``run --print-config``'s YAML writer, commands/run_config.py: it knows the flags): the resolved settings
    instead (defaults, --config, flags; paths absolute)."""
    if print_config is not None:
        return show_config(driver.resolve(cfg), print_config)
    try:
        if quiet():  # -q: the fronts and the results lines only
            with open(os.devnull, "w") as progress:
                driver.run_search(cfg, out=progress, results=sys.stdout)
        else:
            driver.run_search(cfg)
    except driver.NoTrialCompleted as err:  # every trial failed: said last, in one line, and exit code 1
        sys.stdout.flush()
        print(f"blocksearch: {err}", file=sys.stderr)
        return 1
    return 0


def show_config(cfg: SearchConfig, dump: Callable[[SearchConfig], str]) -> int:
    """``run --print-config``: the resolved settings ``cfg`` as YAML (``dump``), and what ``--score`` resolves to."""
    stage = first_stage(cfg.score, is_toy(cfg.teacher), cfg.steps, family=driver.space_family(cfg))
    base = driver.first_stage_config(cfg, stage)
    print(dump(cfg), end="")
    steps, rungs = base.steps or DistillConfig().steps, ",".join(map(str, base.rungs or ())) or "none"
    print(f"# score {cfg.score} resolves to: {base.score} after {steps} KD steps, rungs {rungs} (FID) -- "
          f"{stage.why}")
    return 0
