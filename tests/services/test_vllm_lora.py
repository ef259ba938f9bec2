"""The CPU LoRA ops the vLLM plugin puts in place give what vLLM's own give, in vLLM's own calls."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from protege.services import vllm_lora  # noqa: E402

SLOTS, RANK, HIDDEN, OUT = 4, 8, 24, 40


@pytest.fixture
def vllm_ops() -> Iterator[dict[str, Any]]:
    """vLLM's own ops, and vLLM's modules as they were once the test is done."""
    from vllm.lora.ops import torch_ops
    from vllm.lora.punica_wrapper import punica_cpu

    modules = (lora_ops, torch_ops, punica_cpu)
    before = {(m, name): getattr(m, name) for m in modules for name in vllm_lora._OPS}
    yield {name: vllm_lora._vllms(name) for name in vllm_lora._OPS}
    for (module, name), op in before.items():
        setattr(module, name, op)


# token → slot: one adapter, several, the no-adapter index (-1), one token
INDICES = [[2] * 7, [0, 3, 3, 1, 0, 2, 3], [-1, 1, -1, 1, 0, 0, 2], [1]]


@pytest.mark.parametrize("indices", INDICES)
@pytest.mark.parametrize("stacked_dim", [3, 4])
def test_the_grouped_ops_equal_vllms(indices: list[int], stacked_dim: int, vllm_ops: dict[str, Any]) -> None:
    generator = torch.Generator().manual_seed(len(indices) + stacked_dim)
    index = torch.tensor(indices)
    rows = len(indices)
    x = torch.randn(rows, HIDDEN, generator=generator)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=generator)
    if stacked_dim == 3:
        a, b = a.squeeze(1), b.squeeze(1)
    y = torch.randn(rows, RANK, generator=generator)
    start = torch.randn(rows, OUT + 6, generator=generator)

    def both(name: str, output: Any, *args: Any) -> None:
        theirs, ours = output.clone(), output.clone()
        vllm_ops[name](args[0], args[1], theirs, *args[2:])
        getattr(vllm_lora, name)(args[0], args[1], ours, *args[2:])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert not torch.equal(ours, output)  # it wrote

    both("bgmv_shrink", torch.zeros(rows, RANK), x, a, index, 0.5)
    for add in (True, False):
        both("bgmv_expand", start, y, b, index, add)
        both("bgmv_expand_slice", start, y, b, index, 3, OUT, add)
    # rows that do not match the indices: vLLM's own op, whatever it makes of them
    both("bgmv_expand", start[:1], y[:1], b, index, True)


def test_register_puts_them_where_vllm_calls_them(vllm_ops: dict[str, Any]) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    vllm_lora.register()
    vllm_lora.register()  # vLLM may load a plugin more than once
    for name in vllm_lora._OPS:
        assert getattr(punica_cpu, name) is getattr(lora_ops, name) is getattr(vllm_lora, name)
        assert vllm_lora._original[name] is vllm_ops[name]
    # prefill goes through sgmv_*, which calls lora_ops' own bgmv_* names
    x, a = torch.randn(5, HIDDEN), torch.randn(SLOTS, 1, RANK, HIDDEN)
    theirs, ours = torch.zeros(5, RANK), torch.zeros(5, RANK)
    seq_lens, slots = torch.tensor([2, 3]), torch.tensor([1, 3])
    vllm_ops["bgmv_shrink"](x, a, theirs, torch.repeat_interleave(slots, seq_lens), 1.0)
    lora_ops.sgmv_shrink(x, a, ours, None, seq_lens, slots, 2, 3, 5, 1.0)
    torch.testing.assert_close(ours, theirs)


def test_another_vllm_keeps_its_own_ops(monkeypatch: pytest.MonkeyPatch, vllm_ops: dict[str, Any]) -> None:
    vllm = importlib.import_module("vllm")
    monkeypatch.setattr(vllm, "__version__", "0.0.1")
    vllm_lora.register()
    assert all(getattr(lora_ops, name) is vllm_ops[name] for name in vllm_lora._OPS)


def test_vllm_finds_the_plugin() -> None:
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["protege_cpu_lora"] == "protege.services.vllm_lora:register"
