"""The local stack's pool: the engine computes in a dtype the CPU has."""

from __future__ import annotations

from protege.serving.pool.config import engine_args
from protege.stack.config import StackConfig, cpu_engine_dtype


def test_bf16_only_where_the_cpu_computes_it_natively() -> None:
    assert cpu_engine_dtype({"avx2", "fma"}) == "float32"  # emulated bf16 decodes at half the speed
    assert cpu_engine_dtype({"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert cpu_engine_dtype({"amx_bf16", "amx_tile"}) == "bfloat16"
    assert cpu_engine_dtype(set()) == "float32"  # no /proc/cpuinfo: the safe choice


def test_the_local_pool_hands_its_dtype_to_vllm() -> None:
    pool = StackConfig().pool
    args = engine_args(pool)
    assert args[args.index("--dtype") + 1] == pool.engine.dtype in {"float32", "bfloat16"}
