"""Directories that appear whole or not at all: filled beside their place, then renamed into it.

A reader that finds the directory finds every file of it (the rename is atomic on one file
system), so a download cut short, a process killed midway or two processes filling the same
place at once (replicas sharing a cache volume) never leave a half-written directory behind.
:func:`exclusive` goes further for the second of two such processes: it waits for the first
instead of filling a copy of its own (one download of a model per cache, not one per replica).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def rename_into_place(staging: Path, destination: Path) -> bool:
    """Rename the finished ``staging`` directory to ``destination`` (missing or empty).

    False, with ``staging`` left as it is, when ``destination`` already holds files: another
    process put its own copy there first.
    """
    try:
        os.rename(staging, destination)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            return False
        raise
    return True


def staged_directory(destination: Path, fill: Callable[[Path], None]) -> bool:
    """Run ``fill`` on a new directory beside ``destination``, then rename it into place.

    A failure in ``fill`` removes the new directory and leaves ``destination`` as it was. False
    (and the new directory removed) when ``destination`` already held files.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".tmp-{destination.name}-"))
    try:
        fill(staging)
        placed = rename_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not placed:
        shutil.rmtree(staging, ignore_errors=True)
    return placed


@contextmanager
def exclusive(place: Path) -> Iterator[None]:
    """Hold ``place``'s lock (the file ``.<name>.lock`` beside it) while this process fills it.

    Processes sharing the volume (replicas on one cache claim, a training job's workers on one
    node) take it one at a time: check for ``place`` again once inside, and the later ones find
    it filled. An ``flock``: released when its holder exits, however it exits (no stale lock);
    kept on a volume whose file system shares locks between its clients (local disks, NFSv4,
    CephFS); elsewhere each still fills a whole copy of its own, as :func:`staged_directory` allows.
    The holder removes the lock file as it leaves, so nothing stays beside ``place``; a process
    that was waiting on the removed file takes the next one.
    """
    place.parent.mkdir(parents=True, exist_ok=True)
    path = place.parent / f".{place.name}.lock"
    while True:
        lock = open(path, "a")  # noqa: SIM115 - held across the yield, closed below
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break  # the file at the path now: this process holds the lock
        except FileNotFoundError:
            pass  # removed by the holder this process waited on
        lock.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        lock.close()  # closing releases the flock
