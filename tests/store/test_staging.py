"""exclusive(): one process at a time fills a place on a shared volume, and a holder that dies frees it."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

from protege.store.staging import exclusive

HOLD = """
import sys, time
from pathlib import Path
from protege.store.staging import exclusive
with exclusive(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def _free(place: Path) -> bool:
    with open(place.parent / f".{place.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True


def test_a_place_is_held_by_one_process_and_freed_when_it_dies(tmp_path: Path) -> None:
    place = tmp_path / "cache" / "model"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(place)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not _free(place)  # another process (another replica's pod) would wait here
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own; the kernel drops its lock
        holder.wait()
    assert _free(place)  # its lock file stays (a SIGKILL removes nothing) but holds no lock
    with exclusive(place):
        assert not _free(place)
    assert [p.name for p in place.parent.iterdir()] == []  # the holder removed the lock file as it left
    assert _free(place)


def test_a_waiter_on_a_removed_lock_file_takes_the_next_one(tmp_path: Path) -> None:
    """The holder removes the file as it leaves: a process that opened it before must not hold a
    lock on the removed file while another locks a new one at the path."""
    place = tmp_path / "model"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.replace("time.sleep(600)", "input()"), str(place)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    holder.stdin.write("\n")  # let it go: it removes the file and releases
    holder.stdin.flush()
    with exclusive(place):  # opened while held or after: either way, the file now at the path
        lock = place.parent / f".{place.name}.lock"
        assert lock.exists() and not _free(place)
    holder.wait(timeout=30)
    assert holder.returncode == 0


def test_the_holder_releases_it_when_its_work_fails(tmp_path: Path) -> None:
    place = tmp_path / "model"
    with pytest.raises(RuntimeError), exclusive(place):
        raise RuntimeError("download failed")
    assert _free(place)
