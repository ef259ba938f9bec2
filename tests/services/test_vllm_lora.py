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
    for weights in a + b:  # the slot without an adapter holds zeros, as vLLM leaves it; vLLM's own
        weights[SLOTS - 1] = 0  # path reads a token without an adapter (-1) as the last slot
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
    step, used = wrapper.protege_step, sorted({slot_ids.index(adapter) for adapter in adapters if adapter})
    assert step.slots == (range(used[0], used[-1] + 1) if used else range(0))
    masked = bool(used) and (len(used) > 1 or 0 in adapters)  # tokens of other slots, or none
    assert (step.mask is not None) == masked


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


def _wrapper(adapters: tuple[int, ...], lengths: tuple[int, ...], slot_ids: list[int | None]) -> Any:
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    tokens = tuple(adapter for adapter, length in zip(adapters, lengths, strict=True) for _ in range(length))
    wrapper = PunicaWrapperCPU(64, 8, "cpu")
    vllm_lora.update_metadata(wrapper, LoRAMapping(tokens, adapters, is_prefill=False), slot_ids, SLOTS, 100)
    return wrapper


def test_weights_written_after_a_step_are_the_ones_applied(vllm_ops: dict[str, Any]) -> None:
    """The float32 copy of the slots follows vLLM's writes: an adapter loaded into a slot (in place,
    as vLLM's set_lora does) is what the next step applies, and a slot reset to zeros adds nothing."""
    generator = torch.Generator().manual_seed(7)
    slices = (OUT, OUT // 2)
    a = tuple(torch.zeros(SLOTS, 1, RANK, HIDDEN) for _ in slices)
    b = tuple(torch.zeros(SLOTS, 1, size, RANK) for size in slices)
    wrapper = _wrapper((1, 2), (2, 3), [1, 2, None, None])
    x, start = torch.randn(5, HIDDEN, generator=generator), torch.randn(5, sum(slices), generator=generator)

    def ours_and_vllms() -> tuple[Any, Any]:
        results = []
        for apply in (vllm_lora.add_lora_linear, vllm_lora._vllm_method("add_lora_linear")):
            y = start.clone()
            apply(wrapper, y, x, a, b, 0.5, slices)
            results.append(y)
        return results[0], results[1]

    ours, _ = ours_and_vllms()
    assert torch.equal(ours, start)  # empty slots: nothing added
    for weights in a + b:
        weights[1, 0].copy_(torch.randn(weights.shape[2:], generator=generator))  # slot 1 gets an adapter
    ours, theirs = ours_and_vllms()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours[2:], start[2:]) and torch.equal(ours[:2], start[:2])  # its tokens only
    for weights in b:
        weights[1].zero_()  # and is removed
    ours, _ = ours_and_vllms()
    assert torch.equal(ours, start)


def test_the_logits_get_an_adapter_only_where_it_holds_weights_for_them(vllm_ops: dict[str, Any]) -> None:
    generator = torch.Generator().manual_seed(11)
    a, b = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator), torch.zeros(SLOTS, 1, OUT, RANK)
    wrapper = _wrapper((1, 2), (1, 1), [1, 2, None, None])
    x, start = torch.randn(2, HIDDEN, generator=generator), torch.randn(2, OUT, generator=generator)
    y = start.clone()
    vllm_lora.add_lora_logits(wrapper, y, x, a, b, 1.0)
    assert torch.equal(y, start)  # neither adapter trained the LM head
    b[1, 0] = torch.randn(OUT, RANK, generator=generator)  # one did (adapter 2, in slot 1)
    theirs = start.clone()
    vllm_lora._vllm_method("add_lora_logits")(wrapper, theirs, x, a, b, 1.0)
    vllm_lora.add_lora_logits(wrapper, y, x, a, b, 1.0)
    torch.testing.assert_close(y, theirs)
    assert not torch.equal(y, start)
