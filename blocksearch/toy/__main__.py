"""`python -m blocksearch.toy VERB ...`: the toy verbs without the top-level CLI."""

import argparse
import sys

from blocksearch.errors import BlocksearchError
from blocksearch.toy.cli import add_toy_parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blocksearch.toy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_toy_parser(sub)
    args = parser.parse_args(["toy", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except BlocksearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
