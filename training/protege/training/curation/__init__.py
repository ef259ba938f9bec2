"""Curation (S2): from the call log to filtered, de-duplicated, PII-free examples."""

from protege.capture.access import DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT
from protege.config import CurationPolicy, CurationSettings
from protege.training.curation.consumer import CurationStats, Curator, ExampleStore
from protege.training.curation.filters import NearDuplicateIndex, reject_reason

__all__ = [
    "DEAD_LETTER_STREAM",
    "DEAD_LETTER_SUBJECT",
    "CurationPolicy",
    "CurationSettings",
    "CurationStats",
    "Curator",
    "ExampleStore",
    "NearDuplicateIndex",
    "reject_reason",
]
