"""A server that leads its own process group takes its children with it, even when it crashed, and
the descendants that started sessions of their own (a Serve replica's vLLM) when it is stopped; a
guarded one (vLLM) also goes when the process that started it dies without stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from protege.services.process import ServiceProcess, pid_alive

FILES = ("child", "session")  # the pids of a child in the group and one in a session of its own


class Forking(ServiceProcess):
    """Stands in for vLLM's server, whose engine core and workers are processes of their own, and
    for a Ray head, whose Serve replica starts vLLM in a session of its own."""

    name = "forking"
    own_group = True

    def command(self) -> Sequence[str]:
        here = self.data_dir
        script = f"setsid sleep 301 & echo $! > {here}/session; sleep 300 & echo $! > {here}/child; wait"
        return ["bash", "-c", script]

    def is_ready(self) -> bool:
        if not all((self.data_dir / n).exists() and (self.data_dir / n).read_text().strip() for n in FILES):
            return False
        # Its pid is written at fork, before `setsid` runs in it: ready once it leads its own group
        # (a stop in between read it as a member of the server's group, and it outlived the stop).
        session = int((self.data_dir / "session").read_text())
        try:
            return os.getpgid(session) == session
        except ProcessLookupError:
            return False


class GuardedForking(Forking):
    dies_with_parent = True


def _gone(pids: Sequence[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("server_class", [Forking, GuardedForking])
@pytest.mark.parametrize("end", ["stop", "kill"])
def test_children_go_with_the_server(tmp_path: Path, end: str, server_class: type[Forking]) -> None:
    server = server_class(tmp_path).start()
    children = [int((tmp_path / name).read_text()) for name in FILES]
    assert all(pid_alive(child) for child in children)
    started = time.monotonic()
    if end == "stop":
        server.stop(timeout=8)
    else:
        server.kill()
    assert _gone(children, 5)
    if end == "stop":  # the guard passed SIGTERM on: no wait for the timeout's SIGKILL
        assert time.monotonic() - started < 8


STARTER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_process import GuardedForking
server = GuardedForking({directory!r}).start()
print(server.pid, flush=True)
time.sleep(600)
"""


def test_a_guarded_server_goes_when_its_starter_dies_without_stopping_it(tmp_path: Path) -> None:
    script = STARTER.format(tests=str(Path(__file__).parent), directory=str(tmp_path))
    starter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    guard = int(starter.stdout.readline())
    child = int((tmp_path / "child").read_text())
    assert pid_alive(guard) and pid_alive(child)
    os.kill(starter.pid, signal.SIGKILL)  # a Serve replica killed: no destructor, no stop()
    starter.wait()
    session = int((tmp_path / "session").read_text())  # out of the guard's group: this test's to end
    os.kill(session, signal.SIGKILL)
    assert _gone([guard, child], 15), "the guarded server outlived the process that started it"
    assert "parent" in (tmp_path / "forking.log").read_text()


def test_the_guard_exits_with_the_commands_status() -> None:
    guard = [sys.executable, "-m", "protege.services.guard", "--parent", str(os.getpid()), "--"]
    assert subprocess.run([*guard, "sh", "-c", "exit 3"], check=False).returncode == 3
    assert subprocess.run([*guard, "sh", "-c", "kill -9 $$"], check=False).returncode == 128 + 9
    no_command = subprocess.run(guard, check=False, capture_output=True, text=True)
    assert no_command.returncode == 2 and "no command" in no_command.stderr
