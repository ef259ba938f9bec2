"""Task discovery (S3): recurring tasks from curated examples, and the router's profiles of them."""

from protege.tasks.discovery.discover import DiscoverySettings, Embedder, MiniLM, discover
from protege.tasks.discovery.tasks import Fingerprint, RouterProfile, Task, TaskRegistry, fingerprint

__all__ = [
    "DiscoverySettings",
    "Embedder",
    "Fingerprint",
    "MiniLM",
    "RouterProfile",
    "Task",
    "TaskRegistry",
    "discover",
    "fingerprint",
]
