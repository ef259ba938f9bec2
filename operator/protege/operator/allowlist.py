"""What a SpecialistPool may choose for itself: its serving image, its engine's extra arguments,
and the service accounts and priority classes of its pods.

A pool's ``spec.image`` runs in its namespace with the platform's Secrets (S3 keys, the pool
token) in its environment, ``spec.engine.extraArgs`` reach vLLM's command line
(``--trust-remote-code`` runs a model repository's code), a ``serviceAccountName`` in its
``spec.podTemplate`` gives the pods the operator creates that account's API rights and cloud
identity (whoever writes the pool need not be able to create pods as it), and a
``priorityClassName`` lets its pods preempt others. The platform team limits these with glob
patterns: the chart's ``pools.allowedImages``, ``pools.allowedExtraArgs``,
``pools.allowedServiceAccounts`` and ``pools.allowedPriorityClasses``, which reach the operator as
``PROTEGE_OPERATOR_ALLOWED_IMAGES``, ``_EXTRA_ARGS``, ``_SERVICE_ACCOUNTS`` and
``_PRIORITY_CLASSES`` (JSON lists; unset: no limit). The operator fails a pool that goes beyond
them (phase ``Failed``, kstatus ``Stalled``) and ``protege render`` refuses it, both through
:meth:`PoolAllowList.refusals`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from protege.api.pods import PodOverrides, PodTemplates
from protege.api.pool import SpecialistPoolSpec
from protege.serving.pool.config import _flag

IMAGES_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_IMAGES"
EXTRA_ARGS_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS"
SERVICE_ACCOUNTS_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"
PRIORITY_CLASSES_VARIABLE = "PROTEGE_OPERATOR_ALLOWED_PRIORITY_CLASSES"
POD_KINDS = ("gateway", "serving", "training")  # the fields of a pool's spec.podTemplate


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
    empty: nothing may be chosen (pools run the platform's serving image, with no extra arguments,
    their pods as the platform's service account and priority class, ``platform.podTemplate``)."""

    images: tuple[str, ...] | None = None
    extra_args: tuple[str, ...] | None = None
    service_accounts: tuple[str, ...] | None = None
    priority_classes: tuple[str, ...] | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> PoolAllowList:
        env = os.environ if environ is None else environ
        return cls(
            images=_patterns(env.get(IMAGES_VARIABLE), IMAGES_VARIABLE),
            extra_args=_patterns(env.get(EXTRA_ARGS_VARIABLE), EXTRA_ARGS_VARIABLE),
            service_accounts=_patterns(env.get(SERVICE_ACCOUNTS_VARIABLE), SERVICE_ACCOUNTS_VARIABLE),
            priority_classes=_patterns(env.get(PRIORITY_CLASSES_VARIABLE), PRIORITY_CLASSES_VARIABLE),
        )

    def image_allowed(self, image: str, *, platform_image: str) -> bool:
        return self.name_allowed(image, self.images, platform=platform_image)

    def extra_arg_allowed(self, name: str) -> bool:
        if self.extra_args is None:
            return True
        flag = engine_flag(name)
        return any(fnmatchcase(flag, engine_flag(pattern)) for pattern in self.extra_args)

    @staticmethod
    def name_allowed(name: str, patterns: tuple[str, ...] | None, *, platform: str | None) -> bool:
        """An image, service account or priority class name: allowed when unlimited, the platform's
        own (for that kind of pod), or matching a pattern."""
        if patterns is None or name == platform:
            return True
        return any(fnmatchcase(name, pattern) for pattern in patterns)

    def _pod_refusals(self, kind: str, pool: PodOverrides, platform: PodOverrides) -> list[str]:
        refused = []
        checks = (
            ("serviceAccountName", pool.service_account_name, platform.service_account_name,
             self.service_accounts, "service accounts", "pools.allowedServiceAccounts"),
            ("priorityClassName", pool.priority_class_name, platform.priority_class_name,
             self.priority_classes, "priority classes", "pools.allowedPriorityClasses"),
        )  # fmt: skip
        for field, name, own, patterns, what, setting in checks:
            if name is None or self.name_allowed(name, patterns, platform=own):
                continue
            if patterns:
                allowed = f"{what} must match one of {_listed(patterns)}"
            elif own:
                allowed = f"pools use the platform's {own!r} (platform.podTemplate.{kind}); remove it"
            else:
                allowed = f"pools may not choose {what}; remove it"
            refused.append(f"spec.podTemplate.{kind}.{field} {name!r} is not allowed: {allowed} ({setting})")
        return refused

    def refusals(
        self, spec: SpecialistPoolSpec, *, platform_image: str, platform_pods: PodTemplates | None = None
    ) -> list[str]:
        """What in the pool the platform does not allow, each naming the field, its value and the
        allowed patterns; empty when it is allowed. The platform's own serving image always is, and
        so are the platform's own service account and priority class of each kind of pod
        (``platform_pods``: the chart's ``platform.podTemplate``)."""
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
        platform_pods = platform_pods or PodTemplates()
        for kind in POD_KINDS:
            refused += self._pod_refusals(
                kind, getattr(spec.pod_template, kind), getattr(platform_pods, kind)
            )
        return refused
