"""`protege gateway`, `protege gateway keys create`, `protege calls tail|stats` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from protege.capture.access import ADMIN
from protege.cli import app
from protege.services.nats import NatsServer
from protege.services.process import free_port, terminate_pid
from protege.serving.server import ServerThread
from protege.testing.plugin import wait_until_ready

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_gateway_from_the_command_line_then_tail_and_stats(
    tmp_path: Path, nats_server: NatsServer, stub_teacher: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"cli{uuid.uuid4().hex[:8]}"
    created = runner.invoke(
        app, ["gateway", "keys", "create", "--tenant", tenant, "--app", "shell", "--name", "me"]
    )
    assert created.exit_code == 0
    key = created.stdout.splitlines()[1]
    entry = yaml.safe_load("\n".join(created.stdout.splitlines()[3:]))
    assert entry[0]["tenant"] == tenant and key not in created.stdout.split("\n", 2)[2]
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump(entry))

    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "PROTEGE_HOME": str(tmp_path / "home"),
        "PROTEGE_NATS_URL": nats_server.url,
        "PROTEGE_NATS_AUTH__CREDENTIALS_DIR": str(nats_server.credentials_dir),  # it logs as the gateway
        "PROTEGE_TEACHER__URL": stub_teacher.url + "/v1",
        "PROTEGE_TEACHER__MODEL": "stub-teacher",
        "PROTEGE_TEACHER__API_KEY": "teacher-secret-value",
        "PROTEGE_GATEWAY__API_KEYS_FILE": str(tmp_path / "keys.yaml"),
    }
    log = (tmp_path / "gateway.log").open("w")
    process = subprocess.Popen(
        [
            *[sys.executable, "-m", "protege.cli", "gateway", "--port", str(port)],
            *["--metrics-port", str(metrics_port), "--log-level", "warning"],
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, process, tmp_path / "gateway.log")
        headers = {"Authorization": f"Bearer {key}"}
        for i in range(5):
            body = {"model": "stub-teacher", "messages": [{"role": "user", "content": f"question {i}"}]}
            assert httpx.post(url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
        bad = {"model": "stub-teacher", "messages": [{"role": "user", "content": "!status 500"}]}
        assert httpx.post(url + "/v1/chat/completions", json=bad, headers=headers).status_code == 500
        assert httpx.get(url + "/metrics").status_code == 404  # /metrics is on its own port
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert f'app="shell",code="200",endpoint="chat.completions",status="ok",tenant="{tenant}"' in metrics
    finally:
        terminate_pid(process.pid)
        log.close()
    assert "teacher-secret-value" not in (tmp_path / "gateway.log").read_text()

    monkeypatch.setenv("PROTEGE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PROTEGE_NATS_AUTH__CREDENTIALS_DIR", str(nats_server.credentials_dir))
    for _ in range(50):  # the gateway flushed its log on shutdown; wait until all six are readable
        lines = runner.invoke(
            app, ["calls", "tail", "--tenant", tenant, "--json", "-n", "100"]
        ).stdout.splitlines()
        if len(lines) == 6:
            break
        time.sleep(0.1)
    records = [json.loads(line) for line in lines]
    assert [r["request"]["messages"][0]["content"] for r in records[:5]] == [
        f"question {i}" for i in range(5)
    ]
    assert records[5]["status"] == "upstream_error"

    pretty = runner.invoke(app, ["calls", "tail", "--tenant", tenant, "-n", "100"])
    assert (
        pretty.exit_code == 0
        and f"{tenant}/shell ok" in pretty.stdout
        and "echo: question 4" in pretty.stdout
    )

    stats = runner.invoke(app, ["calls", "stats", "--tenant", tenant, "--since", "1h", "--json"])
    [row] = json.loads(stats.stdout)
    assert (row["tenant"], row["app"], row["calls"], row["errors"]) == (tenant, "shell", 6, 1)
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["prompt_tokens"] > 0
    table = runner.invoke(app, ["calls", "stats", "--tenant", tenant])
    assert table.exit_code == 0 and tenant in table.stdout and "16.7%" in table.stdout


def test_calls_commands_explain_what_is_wrong(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROTEGE_NATS_URL", nats_server.url)
    monkeypatch.setenv("PROTEGE_CALL_LOG__STREAM", "NO_SUCH_STREAM")
    monkeypatch.setenv("PROTEGE_NATS_AUTH__CREDENTIALS_DIR", str(nats_server.credentials_dir))
    denied = runner.invoke(app, ["calls", "tail"])  # the operator may read the configured stream only
    assert denied.exit_code == 1 and "does not let operator read the call log" in denied.stderr
    admin = nats_server.endpoint(ADMIN)  # who may ask about any stream
    monkeypatch.setenv("PROTEGE_NATS_AUTH__USER", str(admin.user))
    monkeypatch.setenv("PROTEGE_NATS_AUTH__PASSWORD", str(admin.password))
    missing = runner.invoke(app, ["calls", "tail"])
    assert missing.exit_code == 3 and "does not exist yet" in missing.stderr
    assert str(admin.password) not in missing.stderr + missing.stdout
    bad_window = runner.invoke(app, ["calls", "stats", "--since", "yesterday"])
    assert bad_window.exit_code == 2 and "e.g. 90s, 15m, 1h or 7d" in bad_window.stderr
    monkeypatch.setenv("PROTEGE_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    unreachable = runner.invoke(app, ["calls", "stats"])
    assert unreachable.exit_code == 1 and "protege services up" in unreachable.stderr
    bad_tenant = runner.invoke(app, ["gateway", "keys", "create", "--tenant", "a b"])
    assert bad_tenant.exit_code == 2 and "may only hold" in bad_tenant.stderr
