from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


# After the last test, the process leaves without the interpreter's finalization: native libraries
# loaded side by side in it (Ray's in-process driver, torch, vLLM's client, re2) have crashed while
# tearing down (a SIGSEGV after "533 passed" in one CI run), which turned a passing run into a
# failed one. Every fixture has been torn down and every report written by then; the exit status
# is pytest's own.
@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    import os
    import sys

    status = getattr(config, "_protege_exit_status", None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._protege_exit_status = exitstatus  # type: ignore[attr-defined]
