"""The CLI end to end, in-process, with real services where it starts them."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.cli import app
from protege.services.process import free_port, port_open

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROTEGE_CONFIG", raising=False)
    return tmp_path / "home"


def test_version_and_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("protege ")
    assert "services" in runner.invoke(app, ["--help"]).stdout


def test_crds_check_and_generate(tmp_path: Path, repo: Path) -> None:
    assert runner.invoke(app, ["crds", "--check", "-o", str(repo / "crds")]).exit_code == 0
    stale = runner.invoke(app, ["crds", "--check", "-o", str(tmp_path)])
    assert stale.exit_code == 1 and "out of date" in stale.stderr
    assert runner.invoke(app, ["crds", "-o", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["crds", "--check", "-o", str(tmp_path)]).exit_code == 0


def test_bad_configuration_is_exit_2_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEGE_NATS_URL", "localhost:4222")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "PROTEGE_NATS_URL" in result.stderr and "nats://127.0.0.1:4222" in result.stderr


def test_models_list_and_unknown_pull() -> None:
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0
    assert all(model in listed.stdout for model in ("smollm2-135m", "qwen2.5-0.5b", "phi3.5-mini"))
    unknown = runner.invoke(app, ["models", "pull", "gpt-17"])
    assert unknown.exit_code == 1 and "not in the catalogue" in unknown.stderr


@pytest.mark.slow
def test_services_up_status_down(home: Path) -> None:
    nats_port, s3_port = free_port(), free_port()
    assert runner.invoke(app, ["services", "status"]).exit_code == 3
    up = runner.invoke(app, ["services", "up", "--nats-port", str(nats_port), "--s3-port", str(s3_port)])
    try:
        assert up.exit_code == 0, up.output
        assert f"PROTEGE_NATS_URL=nats://127.0.0.1:{nats_port}" in up.stdout
        secret = (home / "services" / "seaweedfs" / "s3-credentials.json").read_text()
        assert secret.split('"secret_access_key": "')[1].split('"')[0] not in up.stdout
        status = runner.invoke(app, ["services", "status"])
        assert status.exit_code == 0 and "nats" in status.stdout and "s3" in status.stdout
        again = runner.invoke(
            app, ["services", "up", "--nats-port", str(nats_port), "--s3-port", str(s3_port)]
        )
        assert again.exit_code == 0  # already running: nothing new started
    finally:
        down = runner.invoke(app, ["services", "down"])
    assert down.exit_code == 0 and "nats" in down.stdout and "s3" in down.stdout
    assert not port_open("127.0.0.1", nats_port) and not port_open("127.0.0.1", s3_port)
