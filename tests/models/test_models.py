"""The real SmolLM2-135M, provisioned from its PyPI package and answering through transformers."""

import shutil
from pathlib import Path

import pytest

from protege.models.catalogue import CATALOGUE, UnknownModelError, lookup
from protege.models.pull import MARKER, ModelUnavailableError, pull, verify_model_dir
from protege.models.resolve import ModelResolver


@pytest.mark.slow
def test_pulled_smollm2_answers_a_chat_prompt_greedily(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()
    assert "Paris" in answer


@pytest.mark.slow
def test_pull_is_idempotent_and_verifiable(smollm2: Path, model_store: Path, tmp_path: Path) -> None:
    assert pull("smollm2-135m", model_store) == smollm2
    assert verify_model_dir(smollm2) == []
    assert ModelResolver(model_store).resolve("smollm2-135m") == smollm2
    copy = tmp_path / "smollm2-135m"
    shutil.copytree(smollm2, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("576", "577"))
    assert verify_model_dir(copy) == ["config.json"]
    with pytest.raises(ModelUnavailableError, match="corrupted"):
        pull("smollm2-135m", tmp_path, verify=True)


def test_catalogue_has_the_facts_selection_needs() -> None:
    entry = lookup("smollm2-135m")
    assert entry.local is not None and entry.context_length == 8192 and entry.licence == "Apache-2.0"
    assert lookup("HuggingFaceTB/SmolLM2-135M-Instruct") == entry
    assert 250e6 < entry.bf16_bytes < 300e6
    assert len({e.id for e in CATALOGUE}) == len(CATALOGUE)


def test_unknown_and_offline_models_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine that cannot reach the hub
    with pytest.raises(UnknownModelError, match=r"not in the catalogue .*hf://org/name"):
        pull("gpt-17", tmp_path)
    with pytest.raises(ModelUnavailableError, match=r"could not fetch Qwen/Qwen2\.5-0\.5B-Instruct from the"):
        pull("qwen2.5-0.5b", tmp_path)
    with pytest.raises(ModelUnavailableError, match="use its directory as file:///path"):
        pull("hf://org/some-model", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-pulled left behind
    with pytest.raises(ModelUnavailableError, match="is not a file"):
        pull("smollm2-135m", tmp_path, source_file=tmp_path / "nothing.gguf")
    assert not (tmp_path / "smollm2-135m" / MARKER).exists()
    with pytest.raises(ModelUnavailableError, match=r"could not fetch Qwen/Qwen2\.5-0\.5B-Instruct from"):
        ModelResolver(tmp_path, hub_cache=tmp_path / "hub").resolve("qwen2.5-0.5b")  # from the hub, as hf://
