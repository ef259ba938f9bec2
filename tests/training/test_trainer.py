"""The LoRA trainer on the real SmolLM2-135M, on CPU: answer-only labels, a short real training run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from protege.api.specialist import TrainingSpec
from protege.models.chat import hermes_messages
from protege.store.artifacts import ArtifactStore
from protege.tasks.examples import example_from_record
from protege.training.trainer import IGNORE, TrainingError, tokenize_row, train_lora
from protege.training.trainer.data import (
    examples_per_pass,
    keep_answer_logits,
    pack_batch,
    pad_batch,
    tokenize_rows,
)
from protege.training.trainer.lora import answer_loss, complete_checkpoint, last_checkpoint
from protege.workload import generate


def rows(count: int, family: str, seed: int = 3) -> list[dict]:  # type: ignore[type-arg]
    examples = [
        example_from_record(call.to_record()) for call in generate(count, seed=seed, families=(family,))
    ]
    return [{"id": e.id, "messages": e.chat(), "tools": e.tools} for e in examples]


def test_tool_calls_become_hermes_text_the_serving_parser_reads() -> None:
    [row] = rows(1, "tool")
    messages = hermes_messages(row["messages"], row["tools"])
    assert "<tools>" in messages[0]["content"] and "search_flights" in messages[0]["content"]
    answer = messages[-1]["content"]
    assert answer.startswith("<tool_call>\n") and answer.endswith("\n</tool_call>")
    call = json.loads(answer.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    original = row["messages"][-1]["tool_calls"][0]["function"]
    assert call == {"name": "search_flights", "arguments": json.loads(original["arguments"])}


@pytest.mark.slow
def test_only_the_answer_is_learnt(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    [row] = rows(1, "intent")
    item = tokenize_row(row, tokenizer, 2048)
    assert item is not None and len(item.input_ids) == len(item.labels)
    learnt = tokenizer.decode(
        [token for token, label in zip(item.input_ids, item.labels, strict=True) if label != IGNORE]
    )
    assert learnt == row["messages"][-1]["content"] + "<|im_end|>\n"
    assert tokenize_row(row, tokenizer, 10) is None  # too long: dropped, never cut
    with pytest.raises(ValueError, match="last message must be the assistant's answer"):
        tokenize_row({"id": "x", "messages": row["messages"][:-1]}, tokenizer, 2048)


@pytest.mark.slow
def test_a_packed_row_has_the_loss_of_the_padded_batch(smollm2: Path) -> None:
    """Packing is exact: attention stays inside each example, so the loss does not move."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    items, _ = tokenize_rows(rows(3, "intent") + rows(3, "extract"), tokenizer, 2048)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    model.config.use_cache = False

    def loss(batch: dict[str, Any]) -> float:
        inputs = {key: torch.tensor(value) for key, value in batch.items()}
        with torch.no_grad():
            if "logits_to_keep" not in inputs:
                return float(model(**inputs).loss)
            labels = inputs.pop("labels")
            return float(answer_loss(model(**inputs), labels))

    padded = pad_batch(items, tokenizer.pad_token_id)
    packed = pack_batch(items)
    assert len(packed["input_ids"]) == 1 and len(packed["input_ids"][0]) == sum(len(i) for i in items)
    answer_tokens = sum(label != IGNORE for item in items for label in item.labels)
    kept = keep_answer_logits(packed)
    assert len(kept["logits_to_keep"]) == answer_tokens  # logits only where an answer token is predicted
    reference = loss(padded)  # transformers' own loss over every logit
    assert loss(kept) == pytest.approx(reference, abs=1e-4)
    assert loss(keep_answer_logits(padded)) == pytest.approx(reference, abs=1e-4)
    # the same row without its position ids attends across examples: a different loss
    crossed = {key: value for key, value in kept.items() if key != "position_ids"}
    assert abs(loss(crossed) - reference) > 0.05


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss_and_saves_an_adapter(smollm2: Path, tmp_path: Path) -> None:
    from peft import PeftConfig

    data = rows(40, "intent")
    spec = TrainingSpec(rank=8, epochs=1, batch_size=8, learning_rate=2e-3, max_seq_len=512)
    result = train_lora(smollm2, data[:32], data[32:], spec, tmp_path, max_steps=4, eval_every=2)
    assert result.steps == 4 and result.tokens_seen > 0 and result.resumed_from is None
    history = json.loads((tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())[
        "log_history"
    ]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert result.best_eval_loss is not None and result.best_eval_loss < losses[0]
    config = PeftConfig.from_pretrained(str(result.adapter_dir))
    assert config.r == 8 and config.lora_alpha == 16
    assert (result.adapter_dir / "adapter_model.safetensors").stat().st_size > 0


def test_qlora_is_refused_without_cuda(tmp_path: Path) -> None:
    spec = TrainingSpec(method="qlora", resources={"gpu": 1})
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
        train_lora(tmp_path / "no-model", [], [], spec, tmp_path)


TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from protege.api.specialist import TrainingSpec
from protege.training.trainer import train_lora
rows = json.loads(Path(sys.argv[3]).read_text())
spec = TrainingSpec(rank=4, epochs=1, batch_size=4, learning_rate=1e-3, max_seq_len=256, seed=7)
train_lora(Path(sys.argv[1]), rows, [], spec, Path(sys.argv[2]), max_steps=6, eval_every=2)
"""


def test_a_checkpoint_killed_mid_save_is_passed_over(tmp_path: Path) -> None:
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_st'), (6, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert last_checkpoint(tmp_path / "checkpoint-6") is None


@pytest.mark.slow
def test_a_step_in_several_passes_is_the_step_in_one() -> None:
    """On CPU a pass holds about 512 tokens: the most examples, dividing the step, that fit."""
    assert examples_per_pass(8, 60, 512) == 8
    assert examples_per_pass(8, 150, 512) == 2  # 4 x 150 = 600 tokens: two passes of four would not fit
    assert examples_per_pass(12, 150, 512) == 3
    assert examples_per_pass(8, 900, 512) == 1  # an example longer than a pass: one at a time
    assert examples_per_pass(7, 100, 512) == 1  # 7 is prime: seven passes of one, not an uneven step


def test_micro_batches_give_the_update_of_the_whole_batch(tiny_llama: Path, tmp_path: Path) -> None:
    """Four passes of two examples make the step one pass of eight makes: the same loss at each
    step (the second step's after the first update). The adapters differ only as Adam's first
    step amplifies float noise (it moves each weight by ±lr whatever its gradient's size).

    Arithmetic, not learning: the two-layer Llama with SmolLM2's tokenizer does."""
    import torch
    from safetensors.torch import load_file

    data = rows(16, "extract", seed=4)
    losses, adapters = {}, {}
    for per_pass in (8, 2):
        spec = TrainingSpec(
            rank=4,
            epochs=1,
            batch_size=8,
            learning_rate=1e-3,
            max_seq_len=512,
            micro_batch_size=per_pass,
            dropout=0,
        )
        result = train_lora(tiny_llama, data, [], spec, tmp_path / str(per_pass), max_steps=2, eval_every=2)
        state = json.loads(
            (tmp_path / str(per_pass) / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text()
        )
        losses[per_pass] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        adapters[per_pass] = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert len(losses[8]) == 2 and losses[2] == pytest.approx(losses[8], rel=1e-3)
    whole, passes = adapters[8], adapters[2]
    difference = sum((whole[n] - passes[n]).norm() ** 2 for n in whole) ** 0.5
    assert difference / sum(whole[n].norm() ** 2 for n in whole) ** 0.5 < 0.05
    assert not all(torch.equal(whole[n], passes[n]) for n in whole)  # trained apart, not copied


def test_a_killed_run_resumes_to_the_same_adapter(smollm2: Path, tmp_path: Path) -> None:
    data = rows(24, "intent", seed=9)
    (tmp_path / "rows.json").write_text(json.dumps(data))
    spec = TrainingSpec(rank=4, epochs=1, batch_size=4, learning_rate=1e-3, max_seq_len=256, seed=7)
    uninterrupted = train_lora(smollm2, data, [], spec, tmp_path / "a", max_steps=6, eval_every=2)

    run = tmp_path / "b"
    process = subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, str(smollm2), str(run), str(tmp_path / "rows.json")]
    )
    deadline = time.monotonic() + 300
    while not complete_checkpoint(run / "checkpoints" / "checkpoint-2"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # after a checkpoint, before the end
    process.wait()
    assert not (run / "adapter").exists()
    resumed = train_lora(smollm2, data, [], spec, run, max_steps=6, eval_every=2)

    assert resumed.resumed_from is not None and resumed.steps == 6

    def digest(result_dir: Path) -> str:
        return hashlib.sha256((result_dir / "adapter_model.safetensors").read_bytes()).hexdigest()

    assert digest(resumed.adapter_dir) == digest(uninterrupted.adapter_dir)


@pytest.mark.slow
def test_two_workers_train_data_parallel_and_the_adapter_comes_back_through_the_store(
    tiny_llama: Path, tmp_path: Path, s3_artifact_store: ArtifactStore
) -> None:
    """Each rank trains in a directory of its own (on a cluster, its own pod); rank 0's adapter
    reaches the driver as the run's checkpoint in the artifact store (S3 here), which is cleaned
    up once downloaded. The plumbing, not learning: on the two-layer Llama."""
    import ray

    from protege.training.trainer.distributed import RUNS_AREA, RunStorage, train_lora_distributed

    data = rows(32, "intent", seed=2)
    spec = TrainingSpec(
        rank=4, epochs=1, batch_size=8, max_seq_len=256, workers=2, resources={"gpu": 0, "cpu": 1}
    )
    store = s3_artifact_store
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        result = train_lora_distributed(
            tiny_llama.as_uri(), data, [], spec, tmp_path / "run",
            storage=RunStorage.in_store(store), name="protege-train-x", max_steps=2, eval_every=1000,
        )  # fmt: skip
    finally:
        ray.shutdown()
    assert result.steps == 2 and result.adapter_dir == tmp_path / "run" / "adapter"
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 4
    # the run's copy is gone (SeaweedFS may keep its empty folder entries; S3 keeps no folders)
    leftover = store.fs.find(f"{store.root}/{RUNS_AREA}/protege-train-x", detail=True)
    assert sum(int(info["size"]) for info in leftover.values()) == 0, leftover
