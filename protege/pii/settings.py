"""The one place a PII backend is built from settings (curation, capture redaction and the router use it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from protege.config import CurationSettings
from protege.pii.redactor import RecordRedaction, Remembering, shared_builtin_backend

log = logging.getLogger(__name__)

_backends: dict[tuple[str, str], Remembering] = {}
_lock = threading.Lock()


def backend_from_settings(settings: CurationSettings | None = None) -> Remembering:
    """The PII backend ``curation.pii_detector`` names, loaded once per process, remembering what
    it found in the texts it saw last (:class:`~protege.pii.redactor.Remembering`).

    ``auto`` (the default): the built-in detectors with Presidio's NER where Presidio, spaCy and
    ``curation.pii_spacy_model`` are installed, the built-in detectors alone elsewhere (logged).
    ``presidio``: RuntimeError, saying how to install it, where it is not installed.
    """
    from protege.pii import ner

    settings = settings or CurationSettings()
    choice, model = settings.pii_detector, settings.pii_spacy_model
    if choice == "auto":
        choice = "presidio" if ner.available(model) else "builtin"
        if choice == "builtin":
            log.warning("PII: Presidio or spaCy pipeline %s not installed; built-in detectors only", model)
    with _lock:
        if (choice, model) not in _backends:
            if choice == "presidio":
                _backends[choice, model] = Remembering(ner.NerBackend(model))
                log.info("PII: built-in detectors with Presidio's NER (%s)", model)
            else:
                _backends[choice, model] = shared_builtin_backend()
        return _backends[choice, model]


def text_redactor(settings: CurationSettings | None = None) -> Callable[[str], str]:
    """One text redacted as curation redacts a call's texts (the router's embeddings use it, so the
    router embeds what discovery embedded); the backend loads on first use, in the caller's thread."""
    return lambda text: RecordRedaction(backend_from_settings(settings)).text(text)
