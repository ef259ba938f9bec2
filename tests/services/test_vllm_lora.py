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
    before |= {
        (punica_cpu.PunicaWrapperCPU, name): vllm_lora._vllm_method(name) for name in vllm_lora._METHODS
    }
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

    def both(name: str, output: Any, *args: Any, fallback: bool = False) -> None:
        """Ours against vLLM's, -1 (no adapter) given to vLLM's as an extra slot of zeros (vLLM's
        own ops read -1 as the last slot), except where ours falls back to vLLM's."""
        theirs, ours = output.clone(), output.clone()
        weights, slots = args[1], args[2]
        if not fallback:
            weights = torch.cat([weights, torch.zeros_like(weights[:1])])
            slots = torch.where(slots < 0, SLOTS, slots)
        vllm_ops[name](args[0], weights, theirs, slots, *args[3:])
        getattr(vllm_lora, name)(args[0], args[1], ours, *args[2:])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert not torch.equal(ours, output)  # it wrote

    both("bgmv_shrink", torch.zeros(rows, RANK), x, a, index, 0.5)
    for add in (True, False):
        both("bgmv_expand", start, y, b, index, add)
        both("bgmv_expand_slice", start, y, b, index, 3, OUT, add)
    # rows that do not match the indices: vLLM's own op, whatever it makes of them
    both("bgmv_expand", start[:1], y[:1], b, index, True, fallback=True)


# request → adapter id (0: none), tokens per request: one adapter (the one-slot path), several, none
MAPPINGS = [((2, 2), (3, 1)), ((2,), (1,)), ((1, 3, 0), (2, 1, 3)), ((0, 0), (1, 2))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize(("adapters", "lengths"), MAPPINGS)
def test_a_linear_layers_lora_equals_vllms(
    adapters: tuple[int, ...], lengths: tuple[int, ...], prefill: bool, dtype: str, vllm_ops: dict[str, Any]
) -> None:
    """add_lora_linear over three slices (a fused q/k/v), ours against vLLM's, after update_metadata."""
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    kind = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(sum(adapters) + len(lengths))
    tokens = [adapter for adapter, length in zip(adapters, lengths, strict=True) for _ in range(length)]
    slices = (OUT, OUT // 2, OUT // 2)
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator).to(kind) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, size, RANK, generator=generator).to(kind) for size in slices)
    x = torch.randn(len(tokens), HIDDEN, generator=generator).to(kind)
    start = torch.randn(len(tokens), sum(slices), generator=generator).to(kind)
    mapping = LoRAMapping(tuple(tokens), tuple(adapters), is_prefill=prefill)
    slot_ids = [1, 2, 3, None]  # adapter id of each slot

    results = []
    for apply in (vllm_lora._vllm_method("add_lora_linear"), vllm_lora.add_lora_linear):
        wrapper = PunicaWrapperCPU(64, 8, "cpu")
        vllm_lora.update_metadata(wrapper, mapping, slot_ids, SLOTS, 100)
        y = start.clone()
        apply(wrapper, y, x, a, b, 0.5, slices)
        results.append(y)
    theirs, ours = results
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)
    assert set(adapters) == {0} or not torch.equal(ours, start)  # it wrote
    one = wrapper.protege_one_slot[0]
    assert one == (slot_ids.index(adapters[0]) if len(set(adapters)) == 1 and adapters[0] else None)


def test_register_puts_them_where_vllm_calls_them(vllm_ops: dict[str, Any]) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    vllm_lora.register()
    vllm_lora.register()  # vLLM may load a plugin more than once
    for name in vllm_lora._OPS:
        assert getattr(punica_cpu, name) is getattr(lora_ops, name) is getattr(vllm_lora, name)
        assert vllm_lora._original[name] is vllm_ops[name]
    for name in vllm_lora._METHODS:
        assert getattr(punica_cpu.PunicaWrapperCPU, name) is getattr(vllm_lora, name)
        assert vllm_lora._original[name].__module__.startswith("vllm.")  # vLLM's own, kept
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
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    assert all(getattr(PunicaWrapperCPU, name).__module__.startswith("vllm.") for name in vllm_lora._METHODS)


def test_vllm_finds_the_plugin() -> None:
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins["protege_cpu_lora"] == "protege.services.vllm_lora:register"
