"""Multi-LoRA serving: decode throughput with adapters vs the base model, hot-load time, router cost.

All on one vLLM engine (CPU build here) serving SmolLM2-135M with LoRA enabled
(``--max-loras 8 --max-lora-rank 16``), in one run:

1. hot-load: a rank-16 adapter loaded at run time (``/v1/load_lora_adapter``) to its first
   streamed token, against the base model's own time to first token on the same prompt;
2. decode throughput: --concurrency callers, each answer --tokens tokens long (``ignore_eos``),
   the base model alone against mixed traffic spread over 1, 2 and 8 adapters, in
   interleaved rounds (target: mixed ≥ 90% of base);
3. the router's added latency: sequential calls through the gateway with routing on (task
   classification, routing table, dispatch to the engine URL) against calling the same
   engine directly. The engine here is the fast stub upstream, so the difference is the
   router's own cost, not the model's (target: ≤ 5 ms at p50). The call log is off in
   this part; what logging costs is measured by bench/gateway_overhead.py.

    .venv/bin/python bench/multilora.py [--concurrency 16] [--tokens 32] [--rounds 2] [--calls 300]

Measured (2-core AMD EPYC with AVX-512 and bf16, vLLM 0.32.0 CPU build, one run each): vLLM's
CPU backend reserves a core for the API server and binds its engine to the other; with the
engine core in the API server's process instead (VLLM_ENABLE_V1_MULTIPROCESSING=0, what
VllmServer now sets for CPU engines), base decode went 174.0 -> 260.9 tokens/s, adapters
52-54 -> 70-71, hot-load 0.32 -> 0.25 s (docs/serving.md). Adapters stayed under a third of
base: NOT met (profiled below).

The dtype (2-core AVX2 EPYC, no AVX-512, one run): vLLM emulates bf16 where the CPU lacks it,
and a CPU engine's ``auto`` now means float32 there (protege.services.vllm.cpu_dtype): base
19.7 -> 62.5 tokens/s, 0.99x a plain transformers batched generate of the same model (63.3);
the memory-bandwidth bound is 207. Adapters 0.43-0.50x base.

LoRA ops (same machine, float32, one run): py-spy put two thirds of an adapter engine's busy
time on vLLM's CPU LoRA ops copying every token's adapter weights; with Protégé's vLLM plugin
(protege.services.vllm_lora) 1 / 2 / 8 adapters decode 52.1 / 39.9 / 29.7 tokens/s against
26.9 / 28.4 / 31.2 (0.71 / 0.54 / 0.40x base): NOT met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import process

from protege.capture.stats import percentile
from protege.config import load_settings
from protege.models.pull import pull
from protege.services.process import free_port
from protege.services.vllm import VllmServer
from protege.serving.gateway.auth import hash_key, new_key
from protege.serving.router.table import RoutingTable, SpecialistRoute
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import save_registry
from protege.tasks.discovery.tasks import (
    Exemplar,
    RouterProfile,
    Task,
    TaskRegistry,
    fingerprint,
    tenant_segment_counts,
)
from protege.tasks.examples import example_from_record
from protege.testing.plugin import make_lora_adapter
from protege.workload import generate

console = Console()
PROMPT = [{"role": "user", "content": "Write a short note to a customer about their delayed parcel."}]


async def first_token_seconds(url: str, model: str) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": 4, "stream": True}
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body) as reply,
    ):
        assert reply.status == 200, await reply.text()
        async for line in reply.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token streamed")


async def hot_load_seconds(url: str, name: str, path: Path) -> float:
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}) as r,
    ):
        assert r.status == 200, await r.text()
    return time.perf_counter() - started + await first_token_seconds(url, name)


def generate_rate(model: Path, dtype: str, concurrency: int, tokens: int) -> float:
    """Completion tokens per second of a plain transformers batched ``generate`` of the same
    model in the same dtype: ``concurrency`` copies of the prompt, ``tokens`` tokens each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text] * concurrency, return_tensors="pt")
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    with torch.inference_mode():
        lm.generate(**batch, **{**options, "max_new_tokens": 2, "min_new_tokens": 2})  # warm up
        started = time.perf_counter()
        produced = lm.generate(**batch, **options).shape[1] - batch["input_ids"].shape[1]
        return concurrency * produced / (time.perf_counter() - started)


def bandwidth_bound(model: Path, dtype: str, concurrency: int) -> tuple[float, float]:
    """This machine's memory read bandwidth (GB/s, a sum over 512 MiB) and the decode rate it
    bounds: every step reads every weight once, for ``concurrency`` tokens."""
    import numpy as np
    import torch
    from safetensors import safe_open

    data = np.ones(1 << 27, dtype=np.float32)  # 512 MiB, far past any cache
    data.sum()
    started = time.perf_counter()
    for _ in range(5):
        data.sum()
    bandwidth = 5 * data.nbytes / (time.perf_counter() - started)
    with safe_open(model / "model.safetensors", "np") as weights:
        parameters = sum(int(np.prod(weights.get_slice(name).get_shape())) for name in weights.keys())  # noqa: SIM118
    step_bytes = parameters * torch.finfo(getattr(torch, dtype)).bits // 8
    return bandwidth / 1e9, concurrency * bandwidth / step_bytes


async def decode_rate(url: str, models: list[str], concurrency: int, tokens: int) -> float:
    """Completion tokens per second, ``concurrency`` calls at once spread over ``models``."""
    async with aiohttp.ClientSession() as session:

        async def one(index: int) -> int:
            body = {
                "model": models[index % len(models)],
                "messages": PROMPT,
                "max_tokens": tokens,
                "ignore_eos": True,
                "temperature": 0,
            }
            async with session.post(f"{url}/v1/chat/completions", json=body) as reply:
                data = await reply.json()
                assert reply.status == 200, data
                return int(data["usage"]["completion_tokens"])

        started = time.perf_counter()
        produced = await asyncio.gather(*(one(i) for i in range(concurrency)))
        return sum(produced) / (time.perf_counter() - started)


def intent_task(tenant: str) -> tuple[TaskRegistry, dict]:  # type: ignore[type-arg]
    calls = generate(4, seed=5, families=("intent",))
    examples = [example_from_record(c.to_record().model_copy(update={"tenant": tenant})) for c in calls]
    counts = tenant_segment_counts(examples)
    task = Task(
        id="task-intent",
        name="intent",
        size=len(examples),
        output_kind=examples[0].output_kind,
        example_ids=[e.id for e in examples],
        exemplars=[Exemplar(id=examples[0].id, user_text="x")],
        router=RouterProfile(
            fingerprint=fingerprint(examples[0], counts[tenant]),
            centroids=[],
            threshold=0.5,
            embedding_model="-",
        ),
        first_seen=datetime.now(UTC),
    )
    body = calls[0].to_record().request.model_dump(exclude_none=True)
    return TaskRegistry(tasks=[task], prompt_segments=counts), {**body, "model": "stub-teacher"}


async def sequential_ms(url: str, body: dict, headers: dict[str, str], calls: int) -> list[float]:  # type: ignore[type-arg]
    times = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(calls):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body) as reply:
                await reply.read()
                assert reply.status == 200, reply.status
            times.append((time.perf_counter() - started) * 1000)
    return times


def router_latency(tmp: Path, calls: int, rounds: int) -> dict[str, list[float]]:
    """Sequential latencies, direct to the stub engine and through the routing gateway."""
    store = ArtifactStore((tmp / "store").as_uri())
    registry, body = intent_task("bench")
    save_registry(store, registry)
    route = SpecialistRoute(specialist="intent", tenant="bench", task_id=registry.tasks[0].id, active="v1")
    (tmp / "routes.json").write_text(RoutingTable(routes=[route]).model_dump_json())
    key = new_key()
    (tmp / "keys.json").write_text(json.dumps([{"sha256": hash_key(key), "tenant": "bench", "app": "bench"}]))
    engine_port, gateway_port = free_port(), free_port()
    engine = f"http://127.0.0.1:{engine_port}"
    env = {
        "PROTEGE_HOME": str(tmp / "home"),
        "PROTEGE_ARTIFACT_STORE": store.url,
        "PROTEGE_CALL_LOG__ENABLED": "false",
        "PROTEGE_TEACHER__URL": engine + "/v1",
        "PROTEGE_TEACHER__MODEL": "stub-teacher",
        "PROTEGE_GATEWAY__API_KEYS_FILE": str(tmp / "keys.json"),
        "PROTEGE_ROUTER__ENABLED": "true",
        "PROTEGE_ROUTER__ENGINE_URL": engine,
        "PROTEGE_ROUTER__TABLE": str(tmp / "routes.json"),
    }
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    gateway = [
        sys.executable,
        "-m",
        "protege.cli",
        "gateway",
        "--log-level",
        "warning",
        "--port",
        str(gateway_port),
    ]
    results: dict[str, list[float]] = {"direct": [], "routed": []}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process(
                "stub",
                [*uvicorn, "--port", str(engine_port), "protege.testing.stub_teacher:app"],
                {},
                engine + "/v1/models",
                tmp,
            )
        )
        stack.enter_context(process("gateway", gateway, env, f"http://127.0.0.1:{gateway_port}/healthz", tmp))
        routed_url = f"http://127.0.0.1:{gateway_port}"
        probe = httpx.post(
            f"{routed_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert probe.headers.get("x-protege-upstream") == "intent@v1", "the bench call was not routed"
        direct_body = {**body, "model": "intent@v1"}
        for _ in range(rounds):
            results["direct"] += asyncio.run(
                sequential_ms(engine, direct_body, {"serve_multiplexed_model_id": "intent@v1"}, calls)
            )
            results["routed"] += asyncio.run(
                sequential_ms(routed_url, body, {"Authorization": f"Bearer {key}"}, calls)
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--calls", type=int, default=300, help="sequential calls per round for the router latency"
    )
    parser.add_argument("--models", type=Path, default=load_settings().model_dir)
    parser.add_argument(
        "--targets",
        default="all-linear",
        help="the adapters' modules: all-linear (the trainer's default) or a list, e.g. q_proj,v_proj",
    )
    args = parser.parse_args()
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")

    model = pull("smollm2-135m", args.models)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        console.print("router latency (stub engine, gateway with routing) ...")
        routing = router_latency(tmp, args.calls, args.rounds)
        console.print(f"making 8 rank-16 adapters of {args.targets} with PEFT ...")
        adapters = [make_lora_adapter(model, tmp / f"a{i}", 16, i, targets) for i in range(8)]
        engine = VllmServer(tmp / "vllm", model, "base", max_model_len=1024, max_loras=8, max_lora_rank=16)
        console.print(f"plain transformers generate, {engine.dtype} ...")
        generated = max(generate_rate(model, engine.dtype, args.concurrency, args.tokens) for _ in range(2))
        gigabytes, bound = bandwidth_bound(model, engine.dtype, args.concurrency)
        console.print(f"starting vLLM (CPU build, --dtype {engine.dtype}) with LoRA ...")
        with engine:
            url = engine.url.removesuffix("/v1")
            asyncio.run(first_token_seconds(url, "base"))  # warm up
            base_ttft = statistics.median(asyncio.run(first_token_seconds(url, "base")) for _ in range(3))
            hot = asyncio.run(hot_load_seconds(url, "a0", adapters[0]))
            for i, path in enumerate(adapters[1:], 1):
                asyncio.run(hot_load_seconds(url, f"a{i}", path))
            mixes = {
                "base": ["base"],
                "1 adapter": ["a0"],
                "2 adapters": ["a0", "a1"],
                "8 adapters": [f"a{i}" for i in range(8)],
            }
            rates: dict[str, list[float]] = {name: [] for name in mixes}
            for round_index in range(args.rounds):
                console.print(f"decode round {round_index + 1}/{args.rounds} ...")
                for name, models in mixes.items():
                    rates[name].append(asyncio.run(decode_rate(url, models, args.concurrency, args.tokens)))

    table = Table(
        title=f"decode throughput, {args.concurrency} concurrent calls × {args.tokens} tokens "
        f"(best of {args.rounds}; rank-16 adapters of {args.targets})"
    )
    for column in ("traffic", "tokens/s", "× base"):
        table.add_column(column, justify="left" if column == "traffic" else "right")
    base_rate = max(rates["base"])
    for name, values in rates.items():
        table.add_row(name, f"{max(values):.1f}", f"{max(values) / base_rate:.2f}")
    console.print(table)
    verdict = "met" if base_rate >= generated / 2 else "NOT met"
    console.print(
        f"the machine's best with this model ({engine.dtype}): plain transformers batched generate "
        f"{generated:.1f} tokens/s; memory-bandwidth bound {bound:.0f} tokens/s ({gigabytes:.1f} GB/s "
        f"read, every weight once a step). vLLM's base {base_rate:.1f} tokens/s = "
        f"{base_rate / generated:.2f}× the generate (target ≥ 0.5×): {verdict}"
    )
    mixed = min(max(values) for name, values in rates.items() if name != "base")
    verdict = "met" if mixed >= 0.9 * base_rate else "NOT met"
    console.print(f"adapters: the slowest mix {mixed / base_rate:.2f}× base (target ≥ 0.9×): {verdict}")
    console.print(
        f"hot-load of a rank-16 adapter to its first token: {hot:.2f} s "
        f"(base model's own time to first token {base_ttft:.2f} s; target ≤ 1 s): "
        + ("met" if hot <= 1 else "NOT met")
    )
    direct, routed = routing["direct"], routing["routed"]
    added50 = percentile(routed, 50) - percentile(direct, 50)
    added99 = percentile(routed, 99) - percentile(direct, 99)
    console.print(
        f"router added latency over {len(direct)} calls: p50 {added50:.2f} ms, p99 {added99:.2f} ms "
        f"(direct p50 {percentile(direct, 50):.2f} ms, routed p50 {percentile(routed, 50):.2f} ms; "
        "target p50 ≤ 5 ms): " + ("met" if added50 <= 5 else "NOT met")
    )


if __name__ == "__main__":
    main()
