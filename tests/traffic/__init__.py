"""Traffic from agents the project did not write: a scripted teacher and real framework agents.

Importable as ``traffic`` (``pythonpath = ["tests"]`` in pyproject.toml), so tests and
benchmarks can drive the gateway with what OpenAI Agents SDK, LangGraph and pydantic-ai
agents really send.
"""
