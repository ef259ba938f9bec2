"""kmock's Kubernetes emulator with the API server's write rules the operator relies on.

kmock's :class:`~kmock.KubernetesEmulator` stores what it is sent (merge patches merged, JSON patches
applied) and leaves ``metadata.resourceVersion`` as it was given. :class:`KubeApiEmulator` adds:

- server-side apply (``Content-Type: application/apply-patch+yaml``): refused with 400 without a
  ``fieldManager`` (as the API server refuses it); creates the object when it is missing; otherwise
  merged, with the fields each manager set tracked (:mod:`protege.testing.field_owners`, the API
  server's ``managedFields``): fields another manager set stay, fields the applier applied
  before and stops sending are removed;
- a new ``metadata.resourceVersion`` on every create and patch (status included), as the API
  server's;
- a ``metadata.resourceVersion`` in a merge patch or an apply is a precondition: 409 Conflict when
  the object has another one now; a JSON patch whose ``test`` op fails is refused with 422.

- RBAC, once a test sets :attr:`KubeApiEmulator.rbac` (:class:`~protege.testing.rbac.Rbac`, what one
  ServiceAccount may do): the requests of the clients it names by User-Agent (:attr:`rbac_clients`,
  the operator's: kopf's and its own) are refused with 403 Forbidden and the API server's message
  unless a rule allows them; each refusal is kept in :attr:`forbidden`. Discovery is open.
- the Namespaces collection (kopf lists and watches it when it watches named namespaces), which
  kmock cannot parse: the namespaces of stored objects and :attr:`KubeApiEmulator.namespaces`.
- a bounded request log, once :attr:`KubeApiEmulator.keep_requests` is set (benchmarks): kmock
  scans its whole log to match each request, which grows with the run.

The versions move for the kinds the operator's client writes, not for kopf's custom resources
(``protege.dev``, :data:`UNVERSIONED_GROUPS`), which keep kmock's behaviour.
Writes are served one at a time, so a precondition is checked against the state the write lands on.
Use it in a test with ``@pytest.mark.kmock(cls=KubeApiEmulator)``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import yaml
from kmock import KubernetesEmulator
from kmock._internal import enums, k8s, rendering

from protege.testing.field_owners import FieldOwners
from protege.testing.rbac import Rbac

APPLY_PATCH = "application/apply-patch+yaml"
# kopf's own resources keep kmock's versions (as the test set them): kmock's watch replays every object
# when a watch starts, so kopf would see stale bodies whose JSON-patch ``test`` of the version then fails
UNVERSIONED_GROUPS = frozenset({"protege.dev"})


def _error(status: int, reason: str, message: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=status, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class KubeApiEmulator(KubernetesEmulator):
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    rbac: Rbac | None = attrs.field(default=None, init=False)
    rbac_clients: tuple[str, ...] = attrs.field(default=("kopf/", "protege-operator/"), init=False)
    forbidden: list[str] = attrs.field(factory=list, init=False)
    namespaces: set[str] = attrs.field(factory=set, init=False)  # besides those of stored objects
    _fields: FieldOwners = attrs.field(factory=FieldOwners, init=False)
    # None: kmock's whole request log, for assertions; N: only the newest N and those being served
    keep_requests: int | None = attrs.field(default=None, init=False)
    _serving: dict[int, rendering.Request] = attrs.field(factory=dict, init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        if self.keep_requests is None:
            return await self._serve(request)
        self._serving[id(request)] = request
        self._forget_requests(self.keep_requests)
        try:
            return await self._serve(request)
        finally:
            self._serving.pop(id(request), None)

    def _forget_requests(self, keep: int) -> None:
        """Drop all but the newest ``keep`` logged requests, and those being served.

        kmock matches each request against its reactions by scanning the whole log, so over a long
        run (a benchmark's thousands of requests) the emulator's cost per request would grow with
        the run and set the pace instead of the client under test.
        """
        log = self._requests
        old = len(log) - keep
        if old > 0:
            log[:old] = [logged for logged in log[:old] if id(logged) in self._serving]

    async def _serve(self, request: rendering.Request) -> Any:
        self._authorize(request)
        if request.action is enums.action.DELETE and request.resource is not None and request.name:
            self._fields.forget(_object_key(request, request.name))
        if request.resource is None or request.action not in (enums.action.CREATE, enums.action.UPDATE):
            return await super()._handle(request)
        async with self._writes:
            served = self._write(request)
            # kmock matches its reactions to the requests it logged, by identity: the served one stands
            # in for what the client sent while it is served, the log keeps what was sent
            log = self._requests
            index = next(i for i in range(len(log) - 1, -1, -1) if log[i] is request)
            log[index] = served
            self._serving[id(served)] = served
            try:
                return await super()._handle(served)
            finally:
                self._serving.pop(id(served), None)
                log[:] = [request if logged is served else logged for logged in log]

    def _authorize(self, request: rendering.Request) -> None:
        resource = request.resource
        if resource is None or not resource.plural:
            return  # discovery: open to every authenticated client
        verb = _VERBS.get(request.action) if request.action else None
        if request.action is enums.action.UPDATE:
            verb = "update" if request.method is enums.method.PUT else "patch"
        plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
        agent = request.headers.get("User-Agent") or ""
        self._check(
            agent, verb or str(request.method), resource.group or "", plural,
            namespace=request.namespace, name=request.name,
        )  # fmt: skip

    def _check(
        self,
        agent: str,
        verb: str,
        group: str,
        resource: str,
        *,
        namespace: str | None,
        name: str | None = None,
    ) -> None:
        """403 Forbidden, as the API server says it, for a request of the RBAC's clients it does not allow."""
        if self.rbac is None or not agent.startswith(self.rbac_clients):
            return  # no RBAC set, or the test's own requests, KubeRay's, the HPA's
        if not self.rbac.allows(verb, group, resource, namespace, name):
            message = self.rbac.refusal(verb, group, resource, namespace)
            self.forbidden.append(message)
            raise _error(403, "Forbidden", message)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse the namespaces collection (/api/v1/namespaces reads as a namespace's path)
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        return await super().__call__(raw_request)

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The Namespaces: :attr:`namespaces` and those of stored objects. A watch stays open without
        events (none comes or goes in a test) until the client leaves."""
        watch = raw_request.query.get("watch") in ("true", "1")
        try:
            self._check(
                raw_request.headers.get("User-Agent") or "",
                "watch" if watch else "list",
                "",
                "namespaces",
                namespace=None,
            )
        except k8s.KubernetesError as error:
            return await self._render_error(error)
        if not watch:
            names = self.namespaces | {key[1] for key in list(self.objects) if key[1]}
            items = [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in sorted(names)
            ]
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        # aiohttp signals no event when a client leaves: its transport says so
        while raw_request.transport is not None and not raw_request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return response

    def _write(self, request: rendering.Request) -> rendering.Request:
        """The request as the emulator should serve it: checked, its object stamped with a new version."""
        kind = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        data, action, method = copy.deepcopy(request.data), request.action, request.method
        if kind == APPLY_PATCH:
            if not request.params.get("fieldManager"):
                raise _error(400, "BadRequest", "fieldManager is required for apply requests")
            if not isinstance(data, dict):
                data = yaml.safe_load(request.text)
        resource = request.resource
        assert resource is not None  # only Kubernetes writes come here
        if resource.group in UNVERSIONED_GROUPS:
            return attrs.evolve(request, data=data)
        live: dict[str, Any] | None = None
        if action is enums.action.UPDATE and request.name is not None:
            try:
                current = self.objects[resource, request.namespace, request.name]
            except KeyError:
                current = None
            if current is not None and not current.deleted:
                live = dict(current.last.raw)
                _check_preconditions(request, live, data)
            elif kind == APPLY_PATCH:
                action, method = enums.action.CREATE, enums.method.POST  # apply creates what is missing
        if isinstance(data, dict) and request.subresource is None:
            name = request.name or (data.get("metadata") or {}).get("name") or ""
            manager = request.params.get("fieldManager") or _client(request)
            data = self._fields.write(
                _object_key(request, name), manager, live, data, apply=kind == APPLY_PATCH
            )
        version = str(next(self._versions))
        if isinstance(data, dict):
            data.setdefault("metadata", {})["resourceVersion"] = version
        elif isinstance(data, list):
            data = [*data, {"op": "add", "path": "/metadata/resourceVersion", "value": version}]
        return attrs.evolve(request, data=data, action=action, method=method)


def _object_key(request: rendering.Request, name: str) -> tuple[str, ...]:
    """Whose fields :class:`FieldOwners` tracks: the object the request writes or deletes."""
    resource = request.resource
    assert resource is not None
    return (resource.group or "", resource.plural or "", request.namespace or "", name)


def _client(request: rendering.Request) -> str:
    """The field manager of a write that names none: its User-Agent's product, as the API server's."""
    return (request.headers.get("User-Agent") or "unknown").split("/")[0].split()[0] or "unknown"


_VERBS = {
    enums.action.FETCH: "get",
    enums.action.LIST: "list",
    enums.action.WATCH: "watch",
    enums.action.CREATE: "create",
    enums.action.DELETE: "delete",
}


def _check_preconditions(request: rendering.Request, current: dict[str, Any], data: Any) -> None:
    """409 for a merge patch or apply carrying another resourceVersion than ``current``'s; 422 for a
    JSON patch that does not apply (a failed ``test``)."""
    if isinstance(data, dict):
        sent = (data.get("metadata") or {}).get("resourceVersion")
        stored = (current.get("metadata") or {}).get("resourceVersion")
        if sent is not None and str(sent) != str(stored):
            plural = request.resource.plural if request.resource else "objects"
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
    elif isinstance(data, list):
        try:
            jsonpatch.apply_patch(current, data)
        except jsonpatch.JsonPatchException as error:
            raise _error(422, "Invalid", f"the JSON patch does not apply: {error}") from None
