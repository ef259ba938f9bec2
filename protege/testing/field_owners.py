"""Who set each field of an object, as the API server's ``managedFields`` track it, for
:class:`~protege.testing.kube_api.KubeApiEmulator`'s server-side apply.

A field is a leaf of the object's maps (a list counts as one field: a merge patch, the only
merge the emulator has, replaces lists whole). A writer owns the fields it sends; a field whose
value it changes leaves its other owners (an apply is forced, as the operator's are); two
writers that send the same value own it together. An apply prunes: a field this manager applied
before, no longer sends and nobody else owns is removed, as server-side apply removes it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FieldPath = tuple[str, ...]
ObjectKey = tuple[str, ...]
# set by the API server, never owned by a writer
SERVER_FIELDS = frozenset(
    {
        ("metadata", "resourceVersion"),
        ("metadata", "generation"),
        ("metadata", "uid"),
        ("metadata", "creationTimestamp"),
        ("metadata", "managedFields"),
        ("metadata", "selfLink"),
        ("metadata", "deletionTimestamp"),
    }
)
_MISSING = object()


def leaf_fields(obj: Mapping[str, Any], prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    """Each field of ``obj`` with its value (its status and the server's metadata left out)."""
    found: dict[FieldPath, Any] = {}
    for key, value in obj.items():
        path = (*prefix, key)
        if path == ("status",) or path in SERVER_FIELDS:
            continue
        if isinstance(value, Mapping) and value:
            found |= leaf_fields(value, path)
        else:
            found[path] = value
    return found


def _remove(body: dict[str, Any], path: FieldPath) -> None:
    """A ``None`` at ``path`` in a merge patch: the field goes."""
    node = body
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            return  # the writer sends another value above it: that replaces the whole branch
        node = child
    node.setdefault(path[-1], None)


@dataclass
class FieldOwners:
    owners: dict[ObjectKey, dict[str, set[FieldPath]]] = field(default_factory=dict)

    def write(
        self,
        key: ObjectKey,
        manager: str,
        live: Mapping[str, Any] | None,
        sent: Mapping[str, Any],
        *,
        apply: bool,
    ) -> dict[str, Any]:
        """The merge patch to lay over ``live`` for ``manager``'s write of ``sent`` (``apply``: a
        server-side apply, which prunes); the owners follow the write."""
        fields = leaf_fields(sent)
        before = leaf_fields(live) if live is not None else {}
        by = self.owners.setdefault(key, {})
        if live is None:
            by.clear()  # created (again): nobody owned anything of it
        body = copy.deepcopy(dict(sent))
        if apply:
            others = set().union(*(owned for name, owned in by.items() if name != manager))
            for path in by.get(manager, set()) - fields.keys() - others:
                if path in before:
                    _remove(body, path)
        changed = {path for path, value in fields.items() if before.get(path, _MISSING) != value}
        for name in by.keys() - {manager}:
            by[name] -= changed
        by[manager] = set(fields) if apply else by.get(manager, set()) | set(fields)
        return body

    def forget(self, key: ObjectKey) -> None:
        self.owners.pop(key, None)
