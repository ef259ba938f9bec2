"""Protégé's version: the installed distribution's, 0.0.0 in a source tree that is not installed.

``protege`` is a namespace package (its parts live in ./protege, operator/protege,
serving/protege and training/protege), so it has no ``__init__`` to carry this.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("protege")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
