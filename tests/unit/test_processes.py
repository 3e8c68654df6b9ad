"""Test runs that share a machine: a killed run's JIT build lock is cleared, a live one's is not."""

import os
from pathlib import Path

from processes import (
    GUARD_NAME,
    clear_locks_of_killed_workers,
    clear_stale_build_locks,
    compiling_in,
    extensions_build_root,
    free_port,
)


def test_build_root_is_where_torch_builds(monkeypatch, tmp_path):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_build_root() / "cpu_adam" == Path(_get_build_directory("cpu_adam", False))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_build_root() / "op" == Path(_get_build_directory("op", False)) == tmp_path / "op"


def test_a_lock_left_by_a_killed_run_is_removed(tmp_path):
    from torch.utils.file_baton import FileBaton

    (tmp_path / "cpu_adam").mkdir()
    stale = tmp_path / "cpu_adam" / "lock"
    stale.touch()
    # What a load does: the build lock cannot be taken, and waiting on it would never end.
    assert FileBaton(str(stale)).try_acquire() is False
    guard, removed = clear_stale_build_locks(tmp_path)
    try:
        assert removed == [stale] and not stale.exists()
        baton = FileBaton(str(stale))
        assert baton.try_acquire() is True
        baton.release()
    finally:
        guard.close()


def test_a_lock_of_a_live_session_is_kept(tmp_path):
    live_guard, _ = clear_stale_build_locks(tmp_path)  # a session that is still running
    (tmp_path / "fused_adam").mkdir()
    building = tmp_path / "fused_adam" / "lock"
    building.touch()  # ... and is building fused_adam
    try:
        guard, removed = clear_stale_build_locks(tmp_path)
        guard.close()
        assert removed == [] and building.exists()
    finally:
        live_guard.close()  # the session ends (or dies): the next one may clean
    guard, removed = clear_stale_build_locks(tmp_path)
    guard.close()
    assert removed == [building] and not building.exists()
    assert (tmp_path / GUARD_NAME).exists()


def test_a_killed_session_releases_its_guard(tmp_path):
    """The guard is a flock: the kernel drops it with the process, SIGKILL included."""
    import signal
    import subprocess
    import sys

    from paths import HELPERS_DIR

    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
        "from processes import clear_stale_build_locks;"
        "guard, _ = clear_stale_build_locks(Path(sys.argv[2])); print('held', flush=True); time.sleep(600)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(HELPERS_DIR), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        (tmp_path / "cpu_adam").mkdir()
        lock = tmp_path / "cpu_adam" / "lock"
        lock.touch()
        guard, removed = clear_stale_build_locks(tmp_path)
        guard.close()
        assert removed == []
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    guard, removed = clear_stale_build_locks(tmp_path)
    guard.close()
    assert removed == [lock]


def test_free_port_can_be_listened_on():
    import socket

    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_no_test_pins_a_rendezvous_port():
    """Two suites run at once in CI: a fixed port in a test file would let them collide."""
    import re

    from paths import TESTS_DIR

    fixed = re.compile(r"""(?:MASTER_PORT|master_port|main_process_port)["']?\s*[:=,]\s*["']?\d{2,5}\b""")
    pinned = [
        f"{path.relative_to(TESTS_DIR)}: {match.group(0)!r}"
        for path in sorted(TESTS_DIR.rglob("*.py"))
        for match in fixed.finditer(path.read_text(encoding="utf-8"))
    ]
    assert pinned == []


def test_each_virtualenv_builds_in_its_own_folder(monkeypatch):
    """Two virtualenvs sharing torch's default folder rebuild each other's ops (their paths differ)."""
    import sys

    import processes

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    default = extensions_build_root()
    own = processes.virtualenv_build_root()
    assert own.parent == default.parent and own.name.startswith(default.name + "-")
    assert own == processes.virtualenv_build_root()  # stable: built ops are found again
    monkeypatch.setattr(sys, "prefix", "/elsewhere/.venv")
    assert processes.virtualenv_build_root() != own


def test_a_lock_is_kept_while_a_compiler_works_in_the_folder(tmp_path):
    """A killed worker's ninja goes on compiling (orphaned) in the op's folder: its lock stays."""
    import subprocess

    (tmp_path / "cpu_adam").mkdir()
    lock = tmp_path / "cpu_adam" / "lock"
    lock.touch()
    compiler = subprocess.Popen(["sleep", "600"], cwd=tmp_path / "cpu_adam")
    try:
        assert compiling_in(tmp_path)
        guard, removed = clear_stale_build_locks(tmp_path)
        assert removed == [] and lock.exists()
    finally:
        compiler.kill()
        compiler.wait()
    assert not compiling_in(tmp_path)
    try:
        assert clear_locks_of_killed_workers(guard, tmp_path) == [lock] and not lock.exists()
    finally:
        guard.close()


def test_between_modules_only_a_lone_session_clears(tmp_path):
    guard, _ = clear_stale_build_locks(tmp_path)
    other, _ = clear_stale_build_locks(tmp_path)  # a second session on the same folder
    (tmp_path / "fused_adam").mkdir()
    lock = tmp_path / "fused_adam" / "lock"
    lock.touch()
    try:
        assert clear_locks_of_killed_workers(guard, tmp_path) == [] and lock.exists()
        other.close()
        assert clear_locks_of_killed_workers(guard, tmp_path) == [lock] and not lock.exists()
        # the guard is shared again: a session starting now cannot clean under this one
        third, removed = clear_stale_build_locks(tmp_path)
        third.close()
        lock.touch()
        third, removed = clear_stale_build_locks(tmp_path)
        third.close()
        assert removed == [] and lock.exists()
    finally:
        guard.close()
