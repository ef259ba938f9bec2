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
    assert _free(place)
    with exclusive(place):
        assert not _free(place)
    assert _free(place) and not place.exists()  # the lock file sits beside the place, not in it


def test_the_holder_releases_it_when_its_work_fails(tmp_path: Path) -> None:
    place = tmp_path / "model"
    with pytest.raises(RuntimeError), exclusive(place):
        raise RuntimeError("download failed")
    assert _free(place)
