"""Validate objects against a CRD's OpenAPI v3 schema, as the API server's schema check would.

Used for Protégé's own CRDs and for KubeRay's (the operator's rendered RayJobs and
RayServices are checked against KubeRay's real CRDs). CEL rules (x-kubernetes-validations)
are evaluated too, with cel-python (a test dependency), as the API server evaluates them on
a create: each rule with ``self`` bound to the value at its place in the object, transition
rules (those reading ``oldSelf``) only when an old object is given.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]


def openapi_to_jsonschema(node: Schema) -> Schema:  # noqa: PLR0912 - one branch per keyword
    """Kubernetes OpenAPI v3 (nullable, int-or-string, boolean exclusive bounds) → JSON Schema."""
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = openapi_to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [openapi_to_jsonschema(sub) for sub in value]
        elif key == "not":
            out[key] = openapi_to_jsonschema(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = key.replace("exclusiveM", "m")
            if value is True and bound in node:
                out[key] = node[bound]
        elif _dropped(key, node):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if (
        node.get("x-kubernetes-preserve-unknown-fields")
        and out.get("type") == "object"
        and "properties" in out
    ):
        out.setdefault("additionalProperties", True)
    elif out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        # The API server prunes unknown fields; here they are reported, so typos show up in tests.
        out["additionalProperties"] = False
    return out


def _dropped(key: str, node: Schema) -> bool:
    """Kubernetes-only keywords, and bounds already folded into a numeric exclusive bound."""
    exclusive = {"minimum": "exclusiveMinimum", "maximum": "exclusiveMaximum"}.get(key)
    return (
        key.startswith("x-kubernetes-")
        or key == "nullable"
        or bool(exclusive and node.get(exclusive) is True)
    )


class CrdCatalogue:
    """The CRDs of a set of files, by (apiVersion, kind)."""

    def __init__(self, documents: Iterable[dict[str, Any]]) -> None:
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._openapi: dict[tuple[str, str], Schema] = {}
        for crd in documents:
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                self._schemas[(f"{group}/{version['name']}", kind)] = openapi_to_jsonschema(schema)
                self._openapi[(f"{group}/{version['name']}", kind)] = schema

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> CrdCatalogue:
        documents: list[dict[str, Any]] = []
        for path in paths:
            # libyaml's loader: KubeRay's CRDs are 3 MB, ~10x faster to parse than in Python
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            documents.extend(d for d in yaml.load_all(path.read_text(), Loader=loader) if d)
        return cls(documents)

    def kinds(self) -> list[tuple[str, str]]:
        return sorted(self._schemas)

    def errors(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        """Every schema violation and failed CEL rule of ``obj`` as 'path: message' (empty when it is
        valid); ``old``, the stored object it would replace, for transition rules."""
        import jsonschema

        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        schema = self._schemas.get(key)
        if schema is None:
            return [f"no CRD for apiVersion {key[0]!r} kind {key[1]!r}"]
        obj = defaulted(self._openapi[key], obj)  # the API server defaults, then validates
        validator = jsonschema.Draft202012Validator(schema)
        found = sorted(
            f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
            for error in validator.iter_errors(obj)
        )
        return found or cel_errors(self._openapi[key], obj, old)


def defaulted(schema: Schema, value: Any) -> Any:
    """``value`` with the schema's defaults filled in where a field is missing, in every object
    present (structural defaulting, as the API server applies it before validation)."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        filled = {
            name: copy.deepcopy(sub["default"])
            for name, sub in properties.items()
            if name not in value and "default" in sub
        }
        extra = schema.get("additionalProperties")
        other = extra if isinstance(extra, dict) else {}
        filled.update({name: defaulted(properties.get(name, other), child) for name, child in value.items()})
        return filled
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], item) for item in value]
    return value


def cel_errors(schema: Schema, value: Any, old: Any = None, path: str = "") -> list[str]:
    """The x-kubernetes-validations rules ``value`` breaks, at ``schema`` and below it."""
    found = []
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if "oldSelf" in text and old is None:
            continue  # a transition rule: nothing to compare with on a create
        if not _cel_holds(text, value, old):
            found.append(f"{path or '(root)'}: {rule.get('message') or 'failed rule: ' + text}")
    children: list[tuple[str, Schema, Any, Any]] = []
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                children.append((name, sub, value[name], old.get(name) if isinstance(old, dict) else None))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = schema.get("properties") or {}
            for name in value:
                if name not in known:
                    previous = old.get(name) if isinstance(old, dict) else None
                    children.append((name, extra, value[name], previous))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        children = [(str(i), schema["items"], item, None) for i, item in enumerate(value)]
    for name, sub, child, previous in children:
        found += cel_errors(sub, child, previous, f"{path}.{name}" if path else name)
    return found


_PROGRAMS: dict[str, Any] = {}


def _cel_holds(rule: str, value: Any, old: Any) -> bool:
    import celpy
    from celpy.adapter import json_to_cel

    program = _PROGRAMS.get(rule)
    if program is None:
        environment = celpy.Environment()
        program = _PROGRAMS[rule] = environment.program(environment.compile(rule))
    bindings = {"self": json_to_cel(value)}
    if old is not None:
        bindings["oldSelf"] = json_to_cel(old)
    return bool(program.evaluate(bindings))
