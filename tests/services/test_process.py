"""A server that leads its own process group takes its children with it, even when it crashed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from protege.services.process import ServiceProcess, pid_alive


class Forking(ServiceProcess):
    """Stands in for vLLM's server, whose engine core and workers are processes of their own."""

    name = "forking"
    own_group = True

    def command(self) -> Sequence[str]:
        return ["bash", "-c", f"sleep 300 & echo $! > {self.data_dir}/child; wait"]

    def is_ready(self) -> bool:
        return (self.data_dir / "child").exists() and bool((self.data_dir / "child").read_text().strip())


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_children_go_with_the_server(tmp_path: Path, end: str) -> None:
    server = Forking(tmp_path).start()
    child = int((tmp_path / "child").read_text())
    assert pid_alive(child)
    getattr(server, end)()
    for _ in range(50):
        if not pid_alive(child):
            break
        time.sleep(0.1)
    assert not pid_alive(child)
