"""What a SpecialistPool may choose for itself: its serving image and its engine's extra arguments.

A pool's ``spec.image`` runs in its namespace with the platform's Secrets (S3 keys, the pool
token) in its environment, and ``spec.engine.extraArgs`` reach vLLM's command line
(``--trust-remote-code`` runs a model repository's code). The platform team limits both with glob
patterns: the chart's ``pools.allowedImages`` and ``pools.allowedExtraArgs``, which reach the
operator as ``PROTEGE_OPERATOR_ALLOWED_IMAGES`` and ``PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS`` (JSON
lists; unset: no limit). The operator fails a pool that goes beyond them (phase ``Failed``,
kstatus ``Stalled``) and ``protege render`` refuses it, both through :meth:`PoolAllowList.refusals`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from protege.api.pool import SpecialistPoolSpec
from protege.serving.pool.config import _flag

IMAGES_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_IMAGES"
EXTRA_ARGS_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS"


def engine_flag(name: str) -> str:
    """The vLLM flag an ``extraArgs`` key (or a pattern of them) becomes: ``enablePrefixCaching``,
    ``enable_prefix_caching`` and ``--enable-prefix-caching`` are all ``--enable-prefix-caching``."""
    return _flag(name.lstrip("-"))


def _patterns(text: str | None, variable: str) -> tuple[str, ...] | None:
    if text is None or not text.strip():
        return None
    try:
        patterns = json.loads(text)
    except ValueError:
        patterns = None
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(
            f"{variable} must be a JSON list of glob patterns, e.g. '[\"rayproject/*\"]'; got {text!r}"
        )
    return tuple(patterns)


def _listed(patterns: Sequence[str]) -> str:
    return ", ".join(repr(p) for p in patterns)


@dataclass(frozen=True)
class PoolAllowList:
    """Glob patterns (``*`` matches any characters, ``/`` and ``:`` included); ``None``: no limit,
    empty: nothing may be chosen (pools run the platform's serving image, with no extra arguments)."""

    images: tuple[str, ...] | None = None
    extra_args: tuple[str, ...] | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> PoolAllowList:
        env = os.environ if environ is None else environ
        return cls(
            images=_patterns(env.get(IMAGES_VARIABLE), IMAGES_VARIABLE),
            extra_args=_patterns(env.get(EXTRA_ARGS_VARIABLE), EXTRA_ARGS_VARIABLE),
        )

    def image_allowed(self, image: str, *, platform_image: str) -> bool:
        if self.images is None or image == platform_image:
            return True
        return any(fnmatchcase(image, pattern) for pattern in self.images)

    def extra_arg_allowed(self, name: str) -> bool:
        if self.extra_args is None:
            return True
        flag = engine_flag(name)
        return any(fnmatchcase(flag, engine_flag(pattern)) for pattern in self.extra_args)

    def refusals(self, spec: SpecialistPoolSpec, *, platform_image: str) -> list[str]:
        """What in the pool the platform does not allow, each naming the field, its value and the
        allowed patterns; empty when it is allowed. The platform's own serving image always is."""
        refused = []
        if spec.image is not None and not self.image_allowed(spec.image, platform_image=platform_image):
            allowed = (
                f"images must match one of {_listed(self.images)}"
                if self.images
                else f"pools run the platform's serving image {platform_image!r}; remove spec.image"
            )
            refused.append(f"spec.image {spec.image!r} is not allowed: {allowed} (pools.allowedImages)")
        for name, value in spec.engine.extra_args.items():
            if not self.extra_arg_allowed(name):
                allowed = (
                    f"extra vLLM arguments must match one of {_listed(self.extra_args or ())}"
                    if self.extra_args
                    else "no extra vLLM arguments are allowed; remove it"
                )
                field = f"spec.engine.extraArgs.{name} ({json.dumps(value, default=str)})"
                refused.append(f"{field} is not allowed: {allowed} (pools.allowedExtraArgs)")
        return refused
