"""Run the real ``blocksearch`` CLI with the trials' work going through tests.integration.faulty
(the real candidate, plus a failure injected for the Genome named in BLOCKSEARCH_TEST_FAIL_GENOME)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from blocksearch.search import driver as search  # noqa: E402
from blocksearch.cli import main  # noqa: E402

search.CANDIDATE = "tests.integration.faulty:candidate"
sys.exit(main(sys.argv[1:]))
