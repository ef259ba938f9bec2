from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_llama(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer Llama with random weights and SmolLM2's tokenizer and chat template.

    For tests of the path from traffic to routes, where what an adapter learns is not under test
    (real SmolLM2 training: tests/training): a job on it takes seconds instead of a minute.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
