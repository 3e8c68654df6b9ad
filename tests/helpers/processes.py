"""What lets several test runs share one machine: free rendezvous ports, and JIT-build locks
that a killed run cannot leave behind for the next one.

Ports: a 2-process test must not use a fixed ``MASTER_PORT``; CI runs the two stacks' suites at
the same time, and two rendezvous on one port hang (the second store cannot bind, or one run's
workers join the other's). :func:`free_port` asks the kernel for an unused port.

Build locks: DeepSpeed JIT-compiles its CPU ops (``cpu_adam``, ``fused_adam``) through
``torch.utils.cpp_extension.load``, which guards each op's build directory with a plain
``lock`` file (``torch/utils/file_baton.py``: created with ``O_EXCL``, removed when the build
ends). A process killed while holding it (a test's timeout, Ctrl-C, a killed CI job) leaves the
file behind, and every later load of that op waits for it forever, even when the op is built.
:func:`clear_stale_build_locks` removes such files at the start of a test session, but only when
no other test session is using the same build directory: each session holds a shared ``flock``
on a guard file there for its whole life (the kernel drops it when the process dies, however it
dies), and the cleaning needs the exclusive lock. The test session builds in a folder of its
virtualenv's own (:func:`virtualenv_build_root`) unless ``$TORCH_EXTENSIONS_DIR`` is set.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sys
from pathlib import Path

GUARD_NAME = ".maskthought-test-sessions"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torch_default_folder() -> Path:
    """``get_default_build_root()/py<major><minor><abiflags>_<cpu|cuXY|rocmXY>``: where torch builds
    when ``$TORCH_EXTENSIONS_DIR`` is unset (``torch.utils.cpp_extension._get_build_directory``)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def extensions_build_root() -> Path:
    """The directory in which this interpreter's torch builds JIT extensions, one folder per op.

    The same rule as ``torch.utils.cpp_extension._get_build_directory`` (private, so restated
    here; ``test_processes.py`` compares the two): ``$TORCH_EXTENSIONS_DIR`` as it is, else
    ``get_default_build_root()/py<major><minor><abiflags>_<cpu|cuXY|rocmXY>``.
    """
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(configured) if configured is not None else _torch_default_folder()


def virtualenv_build_root() -> Path:
    """torch's default folder for this interpreter, suffixed with a hash of ``sys.prefix``.

    torch's default folder is shared by every virtualenv with the same Python and CUDA, and its
    ``build.ninja`` names the virtualenv's paths: two virtualenvs (two clones, a CI clone beside a
    working one) take turns rebuilding ``cpu_adam`` (minutes on 2 cores), and a DeepSpeed test
    that found the op built can run out of time rebuilding it. One folder per virtualenv
    builds each op once.
    """
    digest = hashlib.sha1(str(Path(sys.prefix).resolve()).encode()).hexdigest()[:10]
    default = _torch_default_folder()
    return default.with_name(f"{default.name}-{digest}")


def compiling_in(root: Path) -> bool:
    """Whether a process works inside ``root`` (a build's ninja and compilers run in the op's
    folder). Reads ``/proc/<pid>/cwd``; where there is no ``/proc`` this answers False."""
    root = root.resolve()
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            folder = Path(os.readlink(cwd))
        except OSError:  # gone, or not ours to read
            continue
        if folder == root or root in folder.parents:
            return True
    return False


def _remove_locks(root: Path) -> list[Path]:
    if compiling_in(root):  # a build is running (a worker's orphaned ninja included): leave it
        return []
    removed = sorted(root.glob("*/lock"))
    for lock in removed:
        lock.unlink(missing_ok=True)
    return removed


def clear_stale_build_locks(root: Path) -> tuple[object, list[Path]]:
    """Remove the ``<op>/lock`` files under ``root`` that no live test session can own.

    Takes the exclusive ``flock`` on ``root/.maskthought-test-sessions`` without waiting; when
    it gets it (no other session holds the guard) and no process is compiling in ``root``, every
    op's ``lock`` file is left over from a killed run and is removed. Either way the lock is then
    held shared until the returned file is closed (or the process ends), so a session that starts
    later leaves this one's builds alone. Returns ``(guard file, removed lock paths)``; keep the
    guard open for the session (see :func:`clear_locks_of_killed_workers`). Not protected: a
    build by something other than a test session (it holds no guard) between its compiler runs.
    """
    root.mkdir(parents=True, exist_ok=True)
    guard = open(root / GUARD_NAME, "a")  # held open for the whole session
    removed: list[Path] = []
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another session is running: its builds may be in progress
    else:
        removed = _remove_locks(root)
    fcntl.flock(guard, fcntl.LOCK_SH)
    return guard, removed


def clear_locks_of_killed_workers(guard, root: Path) -> list[Path]:
    """Between test modules: the locks that a worker killed on its deadline left in ``root``.

    A DeepSpeed test kills a worker that ran out of time, possibly while it built an op; its
    lock would make the next DeepSpeed load in the same session wait for ever (e.g.
    ``test_optimizer_reset.py``'s worker, 1800 s). With no module running, this session builds
    nothing, so when the session's ``guard`` (from :func:`clear_stale_build_locks`) can be made
    exclusive (no other session) and nothing compiles in ``root``, every lock there is stale.
    """
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return []
    try:
        return _remove_locks(root)
    finally:
        fcntl.flock(guard, fcntl.LOCK_SH)
