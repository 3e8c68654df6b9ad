"""Shared fixtures: where the offline data lives, and the environment every run needs."""

import os
import sys
import warnings
from pathlib import Path

import pytest

# the helper modules (tiny runs, capture plugins, workers) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

from paths import SHARED_DATA  # noqa: E402
from processes import (  # noqa: E402
    clear_locks_of_killed_workers,
    clear_stale_build_locks,
    extensions_build_root,
    virtualenv_build_root,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_BUILD_GUARD = None  # held (flock shared) for the session: see processes.clear_stale_build_locks


def pytest_configure(config):
    """DeepSpeed's JIT ops build in this virtualenv's own folder (unless $TORCH_EXTENSIONS_DIR is
    set), inherited by every worker; a build lock left there by a killed run would hang every
    DeepSpeed test: clear it."""
    global _BUILD_GUARD
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(virtualenv_build_root()))
    _BUILD_GUARD, removed = clear_stale_build_locks(extensions_build_root())
    for lock in removed:
        config.issue_config_time_warning(
            pytest.PytestWarning(f"removed a torch extension build lock left by a killed run: {lock}"), stacklevel=2
        )


@pytest.fixture(scope="module", autouse=True)
def _no_build_lock_of_a_killed_worker():
    """After each module: a DeepSpeed worker killed on its deadline mid-build leaves its op's
    build lock, and the next module's DeepSpeed load would wait on it for ever."""
    yield
    for lock in clear_locks_of_killed_workers(_BUILD_GUARD, extensions_build_root()):
        warnings.warn(f"removed the torch extension build lock of a killed worker: {lock}", stacklevel=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only ../shared/data directory (GSM8K and the official ICoT files)."""
    if not (SHARED_DATA / "gsm8k" / "train.jsonl").exists():
        pytest.fail(
            f"offline data not found at {SHARED_DATA}; set MASKTHOUGHT_SHARED_DATA",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_preprocess_flag_leak(monkeypatch):
    """axolotl's in-process `preprocess` sets AXOLOTL_IS_PREPROCESS=1 for good; a later
    in-process training would then skip computing max_steps. Each test starts clean."""
    monkeypatch.delenv("AXOLOTL_IS_PREPROCESS", raising=False)
