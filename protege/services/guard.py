"""Run a command; take its process group down with it once the process that started it is gone.

    python -m protege.services.guard --parent PID -- COMMAND [ARG ...]

A server that leads a process group of its own (vLLM: its engine core and workers) starts
through this guard when whoever started it may die without stopping it: a Ray Serve replica
that a failed health check or the memory monitor kills runs no destructor, and the vLLM
server it started would live on, 2.8 GiB a worker. The guard leads the group, runs the
command as its child, passes SIGTERM and SIGINT on, exits with the command's status, and
once its parent is gone (it has been re-parented) stops the command and kills the group.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType

POLL_SECONDS = 1.0


def exit_status(returncode: int) -> int:
    """A shell's status for a child's return code (killed by signal N: 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protege.services.guard", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--parent", type=int, required=True, help="The process whose end ends the command.")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="Seconds from SIGTERM to SIGKILL once the parent is gone."
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- and the command line to run.")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run: give it after --")
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            return exit_status(child.wait(timeout=POLL_SECONDS))
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() == args.parent:
            continue
        print(
            f"guard: parent {args.parent} is gone; stopping {command[0]} (pid {child.pid})", file=sys.stderr
        )
        child.terminate()
        try:
            child.wait(timeout=args.grace)
        except subprocess.TimeoutExpired:
            child.kill()
        if os.getpgrp() == os.getpid():  # leading the group: its other members (vLLM's workers) too
            os.killpg(os.getpid(), signal.SIGKILL)
        return exit_status(child.wait())


if __name__ == "__main__":
    sys.exit(main())
