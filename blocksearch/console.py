"""The command line's conventions that several modules share: ``-q`` and old flag spellings.

``-q`` (quiet) keeps progress off the terminal: ``blocksearch -q`` sets ``BLOCKSEARCH_QUIET=1`` in the
environment (so Ray's local workers inherit it), and every progress bar reads it through :func:`quiet`.
A renamed flag keeps its old spelling as a deprecated alias (:func:`add_renamed`): it still works, and says
so in one line on stderr (Python 3.13's ``add_argument(deprecated=True)``, for Python 3.11). Light on
purpose: the command modules (commands/) and toy/cli.py import it, and ``blocksearch --help`` must not load torch.
"""

from __future__ import annotations

import argparse
import os
import sys

QUIET = "BLOCKSEARCH_QUIET"


def set_quiet() -> None:
    """``-q``: progress bars and progress lines off, in this process and in the workers it starts."""
    os.environ[QUIET] = "1"


def quiet() -> bool:
    """Is progress output off (``-q``, or ``BLOCKSEARCH_QUIET=1``)?"""
    return os.environ.get(QUIET, "") not in ("", "0")


def deprecated(old: str, new: str) -> None:
    """The one line an old spelling prints: ``blocksearch: --sampler-steps is deprecated; use --inference-steps``."""
    print(f"blocksearch: {old} is deprecated; use {new}", file=sys.stderr)


class _StoreRenamed(argparse.Action):
    """A stored value whose old spellings still parse, each use printing one deprecation line."""

    def __init__(self, option_strings, dest, old=(), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.old = tuple(old)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            deprecated(option_string, max(self.option_strings, key=len))
        setattr(namespace, self.dest, values)


def add_renamed(parser: argparse.ArgumentParser, *flags: str, old: str | tuple[str, ...], **kwargs) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` that also accepts ``old`` spellings (deprecated); help, usage
    and errors show ``flags`` only."""
    old = (old,) if isinstance(old, str) else tuple(old)
    action = parser.add_argument(*flags, *old, action=_StoreRenamed, old=old, **kwargs)
    action.option_strings = list(flags)  # the old spellings stay in the parser's table, out of the help
    return action
