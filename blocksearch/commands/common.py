"""What every verb's parser shares: one-line errors, ``-v`` / ``-q`` anywhere, the help texts of the flags
several verbs take (``--teacher``, ``--storage``, ``--study``)."""

from __future__ import annotations

import argparse

from blocksearch.study import SearchConfig, default_study_name

TEACHER_HELP = ("teacher: toy (bundled default; for a transformer space, family: dit, the bundled toy "
                "transformer toy-dit), toy-dit, sd-v1 | sd-v2 | sdxl (published architectures on the "
                "meta device: no weights), a local diffusers folder, or a hub id in the local HF cache")
STORAGE_HELP = "Optuna storage URL (default: sqlite:///<cwd>/runs/blocksearch.db, where blocksearch run keeps it)"
DEFAULT_STUDY = default_study_name(SearchConfig.space, SearchConfig.teacher)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line, ``blocksearch <verb>: error: ...``, and exit code 2 (argparse
    prints the verb's whole usage first); ``--help`` has the usage. Sub-parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_verbosity(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``-v`` / ``-q`` on ``parser`` and on every verb and sub-verb under it, so that they work before or after
    any verb. Below the top they default to absent (SUPPRESS): a verb's parser would otherwise reset a ``-v``
    given before the verb."""
    group = parser.add_mutually_exclusive_group()
    default = False if top else argparse.SUPPRESS
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log progress details (INFO) and show library warnings")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print only warnings, errors and the results: no progress bars or progress lines")
    for action in parser._actions:  # argparse lists a parser's verbs only on its subparsers action
        if isinstance(action, argparse._SubParsersAction):
            for verb in {id(p): p for p in action.choices.values()}.values():  # an alias maps to the same parser
                add_verbosity(verb, top=False)
