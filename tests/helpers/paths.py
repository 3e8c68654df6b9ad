"""Where things are: the repository, the test helpers, and the offline shared data."""

import os
from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent
TESTS_DIR = HELPERS_DIR.parent
REPO_ROOT = TESTS_DIR.parent
SHARED_DATA = Path(os.environ.get("MASKTHOUGHT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
