"""`python -m blocksearch.toy VERB ...` is `blocksearch toy VERB ...`."""

import sys

from blocksearch.cli import main

if __name__ == "__main__":
    sys.exit(main(["toy", *sys.argv[1:]]))
