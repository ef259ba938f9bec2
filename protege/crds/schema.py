"""Pydantic JSON schema → Kubernetes structural OpenAPI v3 schema (pure functions)."""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

# Keywords a structural schema may carry; everything else pydantic emits is dropped.
_KEPT = {
    "type", "format", "description", "default", "enum", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    "uniqueItems", "multipleOf", "required", "nullable", "properties", "items",
    "additionalProperties", "x-kubernetes-validations", "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "minProperties", "maxProperties",
}  # fmt: skip


_RULES = "x-kubernetes-validations"


def to_structural(schema: Schema) -> Schema:
    """Inline every ``$ref``, fold ``anyOf [X, null]`` into ``nullable``, and keep only the
    keywords Kubernetes accepts, so the result is a structural schema."""
    definitions = schema.get("$defs", {})
    return _convert(schema, definitions)


def _resolve(node: Schema, definitions: Schema) -> Schema:
    """The referenced type with the field's keywords over it; a field's CEL rules add to its type's."""
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        definition = copy.deepcopy(definitions[name])
        rules = [*definition.get(_RULES, []), *siblings.get(_RULES, [])]
        node = {**definition, **siblings, **({_RULES: rules} if rules else {})}
    return node


def _convert(node: Schema, definitions: Schema) -> Schema:  # noqa: PLR0912 - one branch per keyword
    node = _resolve(node, definitions)
    node = _fold_nullable(node, definitions)
    if node.get("x-kubernetes-int-or-string"):
        return {k: node[k] for k in ("description", "default", "x-kubernetes-int-or-string") if k in node}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out: Schema = {}
    for key, value in node.items():
        if key not in _KEPT:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, definitions) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, definitions)
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out[key] = _convert(value, definitions)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = copy.deepcopy(value)
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[bound.replace("exclusiveM", "m")] = out[bound]
            out[bound] = True
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
        out.pop("additionalProperties", None)
    elif "type" not in out and not out.get("x-kubernetes-int-or-string"):
        # Any: accept whatever the user writes (the pydantic model validates it).
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    """Type and description first, as people write CRDs by hand."""
    first: Schema = {k: node[k] for k in ("type", "description") if k in node}
    return {**first, **{k: v for k, v in node.items() if k not in first}}


def _fold_nullable(node: Schema, definitions: Schema) -> Schema:
    options = node.get("anyOf")
    if not options:
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    non_null = [o for o in options if o.get("type") != "null"]
    nullable = len(non_null) < len(options)
    if len(non_null) == 1:
        inner = _resolve(non_null[0], definitions)
        merged = {**inner, **rest}
        if nullable:
            merged["nullable"] = True
        return merged
    types = {o.get("type") for o in (_resolve(o, definitions) for o in non_null)}
    if types == {"integer", "string"}:
        return {**rest, "x-kubernetes-int-or-string": True}
    if nullable:
        rest["nullable"] = True
    # A union of several shapes: the API server keeps it as it is; pydantic validates it.
    return {**rest, "x-kubernetes-preserve-unknown-fields": True}


def structural_errors(schema: Schema, path: str = "") -> list[str]:
    """Why ``schema`` is not structural (empty when it is), after the rules of
    apiextensions.k8s.io/v1: a type everywhere, no $ref, properties and
    additionalProperties never together, no metadata in value validations."""
    errors: list[str] = []
    here = path or "(root)"
    if "$ref" in schema or "$defs" in schema or "definitions" in schema:
        errors.append(f"{here}: $ref/$defs are not allowed; inline them")
    special = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not special:
        errors.append(f"{here}: has no type")
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(f"{here}: properties and additionalProperties are mutually exclusive")
    for key in ("anyOf", "allOf", "oneOf", "not"):
        if key in schema:
            items = schema[key] if isinstance(schema[key], list) else [schema[key]]
            for item in items:
                banned = {"type", "description", "default", "nullable", "additionalProperties"} & set(item)
                if banned and not schema.get("x-kubernetes-int-or-string"):
                    errors.append(f"{here}.{key}: value validations may not set {sorted(banned)}")
    for name, sub in schema.get("properties", {}).items():
        errors += structural_errors(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        errors += structural_errors(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        errors += structural_errors(schema["additionalProperties"], f"{path}{{}}")
    return errors
