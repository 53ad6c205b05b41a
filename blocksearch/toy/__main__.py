"""`python -m blocksearch.toy VERB ...` is `blocksearch toy VERB ...` (without the rest of the CLI)."""

import sys

from blocksearch.toy.cli import main

if __name__ == "__main__":
    sys.exit(main())
