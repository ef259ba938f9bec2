"""Protégé: turn an agent's LLM calls into small fine-tuned specialist models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("protege")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
