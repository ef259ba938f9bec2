"""The local stack's pool: the engine computes in a dtype the CPU has."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.services.vllm import VllmServer, cpu_dtype, cpu_flags
from protege.serving.pool.config import engine_args
from protege.stack.config import StackConfig


def test_bf16_only_where_the_cpu_computes_it_natively() -> None:
    assert cpu_dtype({"avx2", "fma"}) == "float32"  # emulated bf16 decodes at a third of the speed
    assert cpu_dtype({"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert cpu_dtype({"amx_bf16", "amx_tile"}) == "bfloat16"
    assert cpu_dtype(set()) == "float32"  # no /proc/cpuinfo: the safe choice


def _dtype(server: VllmServer) -> str:
    command = list(server.command())
    return command[command.index("--dtype") + 1]


def test_auto_is_decided_on_the_machine_that_runs_a_cpu_engine() -> None:
    """The local pool says auto, as a cluster's CPU pool may: the replica's own CPU decides it,
    not the operator's or the CLI's; a GPU engine and an explicit dtype pass through."""
    pool = StackConfig().pool
    assert pool.engine.dtype == "auto" and "--dtype" not in engine_args(pool)

    def server(dtype: str, on_cpus: bool = True) -> VllmServer:
        return VllmServer(Path("/nonexistent"), Path("/model"), "m", on_cpus=on_cpus, dtype=dtype)

    assert _dtype(server("auto")) == cpu_dtype(cpu_flags())
    assert _dtype(server("auto", on_cpus=False)) == "auto"
    assert _dtype(server("float16")) == "float16"


def test_a_cpu_engines_threads_spin_for_work_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU engine's OpenMP threads wait for work spinning, not asleep (a training job beside
    it would make every wake-up slow); a GPU engine's are left alone, and an operator's
    GOMP_SPINCOUNT wins."""
    from protege.services.vllm import CPU_ENGINE_SPINCOUNT

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)

    def environment(on_cpus: bool) -> dict[str, str]:
        return VllmServer(Path("/nonexistent"), Path("/model"), "m", on_cpus=on_cpus).environment()

    assert environment(on_cpus=True)["GOMP_SPINCOUNT"] == CPU_ENGINE_SPINCOUNT
    assert "GOMP_SPINCOUNT" not in environment(on_cpus=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert environment(on_cpus=True)["GOMP_SPINCOUNT"] == "1000"
