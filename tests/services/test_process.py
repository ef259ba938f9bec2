"""A server that leads its own process group takes its children with it, even when it crashed, and
the descendants that started sessions of their own (a Serve replica's vLLM) when it is stopped."""

from __future__ import annotations

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
        return all((self.data_dir / n).exists() and (self.data_dir / n).read_text().strip() for n in FILES)


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_children_go_with_the_server(tmp_path: Path, end: str) -> None:
    server = Forking(tmp_path).start()
    children = [int((tmp_path / name).read_text()) for name in FILES]
    assert all(pid_alive(child) for child in children)
    getattr(server, end)()
    for _ in range(50):
        if not any(pid_alive(child) for child in children):
            break
        time.sleep(0.1)
    assert not any(pid_alive(child) for child in children)
