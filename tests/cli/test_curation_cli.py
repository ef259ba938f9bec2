"""From call log to dataset with the CLI, the curator SIGKILLed mid-run and restarted on the way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from protege.capture.access import CURATOR, GATEWAY
from protege.cli import app
from protege.pii import RecordRedaction
from protege.pii.settings import backend_from_settings
from protege.services.nats import NatsServer
from protege.store.artifacts import ArtifactStore
from protege.tasks.examples import example_from_record
from protege.testing.plugin import call_log
from protege.training.curation import Curator, ExampleStore, NearDuplicateIndex
from protege.training.curation.consumer import near_text
from protege.workload import generate

pytestmark = pytest.mark.slow
runner = CliRunner()
CALLS = 600  # the five families, 120 calls each: every kind of task is found


async def publish_workload(url: str, count: int) -> None:
    client = await call_log(url, GATEWAY).connect()
    js = client.jetstream()
    await js.add_stream(name="PROTEGE_CALLS", subjects=["protege.calls.>"])
    for call in generate(count, seed=41):
        record = call.to_record("acme")
        await js.publish(record.subject, record.to_json())
    await client.close()


def test_curate_killed_mid_run_then_discover_suggest_and_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NatsServer(tmp_path / "nats") as server:
        asyncio.run(publish_workload(server.url, CALLS))
        env = {
            **os.environ,
            "PROTEGE_HOME": str(tmp_path / "home"),
            "PROTEGE_NATS_URL": server.url,
            "PROTEGE_NATS_AUTH__CREDENTIALS_DIR": str(server.credentials_dir),  # it curates as the curator
            "PROTEGE_ARTIFACT_STORE": (tmp_path / "store").as_uri(),
            # what the killed curator took but never acknowledged comes again after this (30 s by
            # default); a batch here is curated in well under a second
            "PROTEGE_CURATION__ACK_WAIT_SECONDS": "8",
        }
        for name, value in env.items():
            if name.startswith("PROTEGE_"):
                monkeypatch.setenv(name, value)
        store = ArtifactStore((tmp_path / "store").as_uri())
        examples = ExampleStore(store)
        curator = subprocess.Popen(
            [sys.executable, "-m", "protege.cli", "curate"], env=env, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while len(examples.keys()) < 50:  # killed once it has written some, not all
            assert curator.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(curator.pid, signal.SIGKILL)
        curator.wait()
        written_before_restart = len(examples.keys())

        restarted = runner.invoke(app, ["curate", "--until-idle", "--idle-seconds", "1"])
        assert restarted.exit_code == 0, restarted.output
        assert "curated" in restarted.stdout

        # Exactly once: no two stored examples are duplicates or near duplicates of each other,
        # and every curatable call of the log is stored or has its (near) duplicate stored.
        stored = examples.load("acme")
        index = NearDuplicateIndex()
        assert all(index.add(examples.key(e), near_text(e)) is None for e in stored)
        backend = backend_from_settings()  # the curator's redaction (NER where installed)
        for call in generate(CALLS, seed=41):
            example = example_from_record(call.to_record("acme"), RecordRedaction(backend))
            assert examples.key(example) in set(examples.keys()) or index.find(near_text(example)) is not None
        assert written_before_restart < len(stored)
        # And it keeps as many as one uninterrupted run does (near-duplicate choices may differ).
        reference = ArtifactStore((tmp_path / "reference").as_uri())
        again = Curator(server.endpoint(CURATOR), reference, durable="reference")
        asyncio.run(again.run(until_idle=True, idle_seconds=1))
        assert abs(len(ExampleStore(reference).keys()) - len(stored)) <= 0.02 * len(stored)

    discovered = runner.invoke(app, ["tasks", "discover"])
    assert discovered.exit_code == 0, discovered.output
    listed = runner.invoke(app, ["tasks", "list"])
    assert listed.exit_code == 0 and "search-flights" in listed.stdout
    shown = runner.invoke(app, ["tasks", "show", "search-flights"])
    assert shown.exit_code == 0 and "output_kind: tool_call" in shown.stdout and "threshold:" in shown.stdout

    suggested = runner.invoke(app, ["tasks", "suggest", "--min-size", "20", "--pool", "demo-pool"])
    assert suggested.exit_code == 0, suggested.output
    documents = list(yaml.safe_load_all(suggested.stdout))
    assert len(documents) == len(runner.invoke(app, ["tasks", "list"]).stdout.split("task-")) - 1
    assert {d["kind"] for d in documents} == {"Specialist"} and {d["spec"]["pool"] for d in documents} == {
        "demo-pool"
    }
    metrics = {d["spec"]["task"]["match"]["outputKind"]: d["spec"]["evaluation"]["metric"] for d in documents}
    assert metrics == {
        "label": "exact_match",
        "json": "json_fields",
        "tool_call": "tool_call",
        "sql": "sql_execution",
    }

    built = runner.invoke(app, ["datasets", "build", "search-flights"])
    assert built.exit_code == 0 and "train" in built.stdout and "test" in built.stdout
    missing = runner.invoke(app, ["datasets", "build", "no-such-task"])
    assert missing.exit_code == 1 and "known tasks" in missing.stderr
    choice = runner.invoke(
        app, ["select", "search-flights", "--candidates", "smollm2-135m,phi3.5-mini", "--max-memory-gib", "2"]
    )
    assert choice.exit_code == 1 and "no candidate fits the budget" in choice.stdout
    assert "protege models pull smollm2-135m" in choice.stdout and "phi3.5-mini: excluded" in choice.stdout
