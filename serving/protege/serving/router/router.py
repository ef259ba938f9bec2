"""The router in the gateway: find the call's task and specialist, ask it, check its answer.

State it reads: the routing table (a JSON file the flywheel driver or operator writes)
and the task registry (router profiles from task discovery, in the artifact store); both
are re-read every ``router.refresh_seconds`` when they changed, by a background task off
the event loop (the store may be S3), never in a call's path. A store that is away keeps
the gateway neither from starting (it waits ``router.startup_wait_seconds`` at most) nor
from answering: calls of tasks not read yet go to the teacher, and the registry is read
as soon as the store answers again. The engine is the pool's Ray Serve application
(:mod:`protege.serving.pool.app`): the router names the adapter version, and a pool
replica loads it on demand. A version the pool refuses is remembered as failed and not
asked for again by this gateway for ``router.failed_retry_seconds`` (a store outage on the
pool's side must not disable it for good). Each version has a circuit breaker and
an adaptive deadline (:mod:`protege.serving.router.breaker`): a version that stopped
answering costs a call its deadline, not ``router.timeout_seconds``, and once its breaker
is open, nothing: its calls go to the teacher without asking it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import aiohttp
from pydantic import ValidationError

from protege.api.calls import ChatRequest, ChatResponse, RouteDecision, RouteReason, UpstreamKind, Usage
from protege.api.routes import RolloutStage
from protege.api.specialist import EvaluationMetric, OutputKind, OutputValidation
from protege.config import RouterSettings, Settings
from protege.evaluation.calibration import signal_value
from protege.evaluation.metrics import resolve_metric, scorer
from protege.pii.settings import text_redactor
from protege.serving.router.breaker import Admission, Breaker, BreakerPolicy, BreakerState
from protege.serving.router.checks import confidence_rule, rejection, token_logprobs
from protege.serving.router.classify import (
    CallEmbeddings,
    RouterBusyError,
    TaskClassifier,
    TaskMatch,
)
from protege.serving.router.table import (
    Choice,
    RoutingTable,
    SpecialistRoute,
    TableFile,
    adapter_name,
    choose,
    conversation_draw,
    conversation_key,
)
from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore
from protege.tasks.datasets import REGISTRY_KIND, REGISTRY_NAME, load_registry
from protege.tasks.discovery.tasks import Task

log = logging.getLogger(__name__)

ENGINE_KEEP_ALIVE_SECONDS = 4.0  # below the pool's own idle keep-alive (Ray Serve, vLLM: 5 s)


@dataclass(frozen=True)
class Plan:
    """What to do with one call, decided before any upstream is asked."""

    route: SpecialistRoute | None
    choice: Choice
    match: TaskMatch | None
    pinned: bool = False
    admission: Admission = Admission.ASK  # how choice.version is asked (its breaker's word)
    shadow_admission: Admission = Admission.ASK  # how choice.shadow is asked
    refused: str | None = None  # the version whose open breaker sent the call to the teacher

    def decision(
        self, target: UpstreamKind, reason: RouteReason | None = None, **extra: Any
    ) -> RouteDecision:
        novelty = self.match.novelty if self.match else None
        return RouteDecision(
            target=target,
            reason=reason or self.choice.reason,
            task_id=self.match.task_id if self.match else (self.route.task_id if self.route else None),
            similarity=self.match.similarity if self.match else None,
            novelty=novelty.share if novelty else None,
            novel=novelty.novel if novelty else None,
            specialist=self.route.specialist if self.route else None,
            version=self.choice.version or self.refused or self.choice.shadow,
            **extra,
        )


@dataclass(frozen=True)
class SpecialistAnswer:
    """One specialist version's answer (or why there is none)."""

    specialist: str
    version: str
    body: dict[str, Any] | None
    seconds: float
    error: str | None = None
    confidence: float | None = None  # the value of the signal its confidence rule reads

    @property
    def message(self) -> dict[str, Any]:
        choices = (self.body or {}).get("choices") or [{}]
        return dict(choices[0].get("message") or {})


@dataclass(frozen=True)
class SpecialistStream:
    """A specialist version's answer as it streams: the open response and its first bytes."""

    specialist: str
    version: str
    response: aiohttp.ClientResponse  # the reader releases it
    first: bytes
    started: float  # time.perf_counter() when it was asked


def streams_tokens(route: SpecialistRoute, version: str, pinned: bool) -> bool:
    """Whether a streamed call may get the version's tokens as they come.

    Only when nothing about the whole answer must be checked before the caller sees it:
    no output validation and no confidence rule (or the caller named the specialist,
    whose answers are returned unchecked).
    """
    unchecked = route.fallback.validate_output is OutputValidation.NONE
    return pinned or (unchecked and confidence_rule(route, version) is None)


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings: RouterSettings = settings.router
        self.curation = settings.curation
        # the pool's engine answers only callers with its token (protege.serving.pool.auth)
        self.pool_token = settings.pool_token.get_secret_value() if settings.pool_token else None
        if self.settings.enabled and not self.pool_token:
            log.warning("router: no pool_token (PROTEGE_POOL_TOKEN): the pool's engine refuses this gateway")
        # one try per request: the refresher tries again every refresh_seconds, and a read stuck in the
        # S3 client's own backoff would hold back the tasks once the store is back
        self.store = ArtifactStore.from_settings(settings, attempts=1)
        # adapter name → why the pool could not serve it, and until when (self.clock()) it is not asked
        self.failed: dict[str, tuple[str, float]] = {}
        self.store_error: str | None = None  # why the last refresh failed (the store away); None: it did not
        self.table = RoutingTable()
        self.tasks: dict[str, Task] = {}
        self.classifier = TaskClassifier([])
        self.embeddings: CallEmbeddings | None = None
        self._busy_said: set[str] = set()
        self._table_file = TableFile(self.settings.table)
        self._registry_version: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.policy = BreakerPolicy.of(self.settings)
        self.breakers: dict[tuple[str, str], Breaker] = {}  # (specialist, version) → its breaker
        self.clock: Callable[[], float] = time.monotonic
        # told (specialist, version, new state) on every breaker transition: the gateway's metrics
        self.on_breaker_change: Callable[[str, str, BreakerState], None] | None = None

    # --- state ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the table and the tasks once, then keep them fresh in the background.

        The first read is waited for ``router.startup_wait_seconds`` at most: a store that is
        away (or slow) does not hold the gateway back; the refresher goes on trying.
        """
        await asyncio.to_thread(self.refresh_table)
        tasks = asyncio.ensure_future(asyncio.to_thread(self._refresh_tasks))
        try:
            await asyncio.wait_for(asyncio.shield(tasks), self.settings.startup_wait_seconds)
        except TimeoutError:
            log.warning(
                "router: the task registry was not read within %g s (router.startup_wait_seconds); "
                "serving meanwhile: calls go to the teacher until it is",
                self.settings.startup_wait_seconds,
            )
        self._refresher = asyncio.create_task(self._refresh_forever(tasks))

    async def _refresh_forever(self, tasks: asyncio.Future[None]) -> None:
        """The table every interval; the tasks too, one read at a time: a store slow to answer
        (away, its client retrying) holds back neither the table nor the breakers."""
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                await asyncio.to_thread(self.refresh_table)
            except Exception:  # the table as it was stays (a broken file is logged by refresh_table)
                log.exception("router: reading the routing table %s failed", self.settings.table)
            if tasks.done():
                tasks = asyncio.ensure_future(asyncio.to_thread(self._refresh_tasks))
            self.forget_unserved()  # on the loop, where the breakers live

    def _refresh_tasks(self) -> None:
        """:meth:`refresh_tasks`, whose failure (the store away) keeps the last good tasks, said once."""
        try:
            self.refresh_tasks()
        except Exception as error:  # a store hiccup must not stop routing on the last good state
            problem = f"{type(error).__name__}: {str(error)[:300]}"
            if self.store_error is None:
                log.warning(
                    "router: reading the task registry from %s failed (%s); routing on the tasks read "
                    "before (calls of others go to the teacher), trying again every %g s",
                    self.store.url,
                    problem,
                    self.settings.refresh_seconds,
                )
                log.debug("router: the task registry read that failed", exc_info=True)
            self.store_error = problem
            return
        if self.store_error is not None:
            log.warning("router: the task registry is read again (after: %s)", self.store_error)
            self.store_error = None

    def refresh(self) -> None:
        """Re-read the routing table and the task registry if they changed (cheap when not)."""
        self.refresh_table()
        self.refresh_tasks()

    def refresh_table(self) -> None:
        """Re-read the routing table (a local file) if it changed."""
        table = self._table_file.changed()
        if table is not None:
            self.table = table

    def refresh_tasks(self) -> None:
        """Re-read the task registry from the artifact store if a new version is there."""
        try:
            latest = self.store.latest(REGISTRY_KIND, REGISTRY_NAME).version
        except ArtifactNotFoundError:
            return
        if latest != self._registry_version:
            registry = load_registry(self.store)
            if registry is None:
                return
            self._registry_version = latest
            self.tasks = {task.id: task for task in registry.tasks}
            classifier = TaskClassifier(registry.tasks, registry.prompt_segments)
            if classifier.needs_embeddings and self.embeddings is None:
                from protege.tasks.discovery import MiniLM

                self.embeddings = CallEmbeddings(MiniLM(), redact=text_redactor(self.curation))
            if self.embeddings is not None:
                classifier = TaskClassifier(registry.tasks, registry.prompt_segments, self.embeddings)
            self.classifier = classifier

    # --- breakers ------------------------------------------------------------------------
    def breaker(self, specialist: str, version: str) -> Breaker:
        """The version's breaker (made on first use; only ever touched on the event loop)."""
        found = self.breakers.get((specialist, version))
        if found is None:
            found = Breaker(self.policy, partial(self._breaker_moved, specialist, version))
            self.breakers[specialist, version] = found
        return found

    def _breaker_moved(self, specialist: str, version: str, old: BreakerState, new: BreakerState) -> None:
        name = adapter_name(specialist, version)
        if new is BreakerState.OPEN:
            log.warning(
                "router: %s's circuit breaker is open (%s); its calls go to the teacher for %g s, then "
                "one probes it",
                name,
                "its probe failed"
                if old is BreakerState.HALF_OPEN
                else f"{self.policy.failures} failures in a row",
                self.policy.cooldown,
            )
        elif new is BreakerState.CLOSED:
            log.warning("router: %s's circuit breaker is closed again: its probe was answered", name)
        if self.on_breaker_change is not None:
            self.on_breaker_change(specialist, version, new)

    def failure(self, name: str) -> str | None:
        """Why the pool could not serve adapter ``name``, while its mark lasts; None: ask it."""
        found = self.failed.get(name)
        if found is None:
            return None
        reason, until = found
        if self.clock() >= until:  # the mark expired: the pool may serve it now (a store outage ended)
            del self.failed[name]
            return None
        return reason

    def forget_unserved(self) -> None:
        """Drop the breakers of versions the routing table no longer has."""
        served = {(route.specialist, version) for route in self.table.routes for version in route.versions}
        for key in [key for key in self.breakers if key not in served]:
            del self.breakers[key]

    def abandon(self, specialist: str, version: str, admission: Admission) -> None:
        """A version admitted in a plan is not asked after all (a shadow left out): free its probe."""
        self.breaker(specialist, version).abandoned(admission)

    # --- per call ------------------------------------------------------------------------
    async def plan(self, tenant: str, request: ChatRequest, conversation: str | None = None) -> Plan:
        """Route for one call; raises UnknownAdapterError for a named specialist that is not served.

        ``conversation`` is the caller's ``x-protege-conversation`` header, if any: with the
        request it makes the canary draw (:func:`conversation_key`), so a conversation keeps
        its version. A version whose circuit breaker is open is not asked: the call goes to
        the teacher (``breaker_open``), and an open shadow version gets no shadow call.
        """
        if self.is_specialist_name(request.model, tenant):
            route, version = self.table.pinned(request.model, tenant)
            # no one else can answer it: never refused, asked within router.timeout_seconds
            return Plan(
                route, Choice(version, RouteReason.PINNED), None, pinned=True, admission=Admission.BYPASS
            )
        try:
            match = await self.classifier.match(tenant, request)
        except RouterBusyError as error:
            if str(error) not in self._busy_said:  # once per cause, not once per call
                self._busy_said.add(str(error))
                log.warning("router: %s; the teacher answers such calls", error)
            return Plan(None, Choice(None, RouteReason.ROUTER_BUSY), None)
        if match is None:
            return Plan(None, Choice(None, RouteReason.NO_TASK_MATCH), None)
        found = self.table.for_task(tenant, match.task_id)
        if found is None:
            return Plan(None, Choice(None, RouteReason.NO_ACTIVE_SPECIALIST), match)
        route = found
        failed = set(route.failed) | {
            version
            for version in route.versions
            if self.failure(adapter_name(route.specialist, version)) is not None
        }
        if failed:
            route = route.model_copy(update={"failed": sorted(failed)})
        draw = 0.0  # only a canary reads it
        if route.candidate is not None and route.candidate.stage is RolloutStage.CANARY:
            draw = conversation_draw(route, conversation_key(request, conversation))
        choice = choose(route, draw)
        now = self.clock()
        shadow_admission = admission = Admission.ASK
        if choice.shadow is not None:
            shadow_admission = self.breaker(route.specialist, choice.shadow).admit(now)
            if shadow_admission is Admission.REFUSE:
                choice = replace(choice, shadow=None)
        if choice.version is not None:
            admission = self.breaker(route.specialist, choice.version).admit(now)
            if admission is Admission.REFUSE:
                refused = Choice(None, RouteReason.BREAKER_OPEN, choice.shadow)
                return Plan(route, refused, match, shadow_admission=shadow_admission, refused=choice.version)
        return Plan(route, choice, match, admission=admission, shadow_admission=shadow_admission)

    def is_specialist_name(self, model: str, tenant: str | None = None) -> bool:
        """Whether ``model`` names a served specialist (of ``tenant``: another's is as good as unknown)."""
        route = self.table.for_specialist(model.split("@", 1)[0])
        return route is not None and (tenant is None or route.tenant == tenant)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # An idle connection is dropped before the pool's own keep-alive (Ray Serve's proxy and
            # vLLM's server: 5 s) closes it, so no call is sent on a connection closing at that moment.
            connector = aiohttp.TCPConnector(keepalive_timeout=ENGINE_KEEP_ALIVE_SECONDS)
            headers = {"Authorization": f"Bearer {self.pool_token}"} if self.pool_token else None
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
        return self._session

    def _deadline(self, breaker: Breaker, admission: Admission, *, first_bytes: bool) -> tuple[float, str]:
        """Seconds to wait for a version, and what set them (for the failure message)."""
        seconds = breaker.deadline(admission, first_bytes=first_bytes)
        if admission is Admission.ASK and seconds < self.policy.timeout:
            return seconds, "its adaptive deadline"
        return seconds, "router.timeout_seconds"

    def _engine_refused(
        self, breaker: Breaker, admission: Admission, name: str, status: int, text: str
    ) -> str:
        """An engine's error status, told to the breaker; the failure message."""
        if status == 422 and "adapter_unavailable" in text:  # the pool could not load it: stop asking
            self.failed[name] = (text[:500], self.clock() + self.settings.failed_retry_seconds)
            log.warning(
                "router: the pool cannot serve %s; its calls go elsewhere for %g s "
                "(router.failed_retry_seconds), then it is asked again: %s",
                name,
                self.settings.failed_retry_seconds,
                text[:300],
            )
            breaker.abandoned(admission)
        elif status >= 500:
            breaker.failed(self.clock(), admission)
        else:  # the engine is alive; the request was the trouble
            breaker.succeeded(self.clock(), admission)
        return f"engine answered {status}: {text[:300]}"

    @property
    def chat_url(self) -> str:
        return f"{str(self.settings.engine_url).rstrip('/')}/v1/chat/completions"

    def _attempt(self, route: SpecialistRoute, version: str, admission: Admission) -> _Attempt:
        """One ask of a version: its adapter name and breaker, timed from now.

        A version the pool refused to load is not asked again: its admission is given back.
        """
        name = adapter_name(route.specialist, version)
        breaker = self.breaker(route.specialist, version)
        failure = self.failure(name)
        if failure is not None:
            breaker.abandoned(admission)
        return _Attempt(route.specialist, version, name, breaker, time.perf_counter(), failure)

    async def ask(
        self,
        body: dict[str, Any],
        route: SpecialistRoute,
        version: str,
        admission: Admission = Admission.ASK,
    ) -> SpecialistAnswer:
        """The version's answer to the call (non-streamed), or the reason there is none.

        It waits the version's deadline (:meth:`Breaker.deadline` for ``admission``, the
        plan's word) and tells the version's breaker how it went.
        """
        attempt = self._attempt(route, version, admission)
        started, failed, name, breaker = attempt.started, attempt.failed, attempt.name, attempt.breaker
        if attempt.failure is not None:
            return failed(attempt.failure)
        rule = confidence_rule(route, version)
        request = {**unstreamed(body), "model": name}
        if rule is not None:
            request["logprobs"] = True
        deadline, source = self._deadline(breaker, admission, first_bytes=False)
        try:
            async with self.session.post(
                self.chat_url,
                json=request,
                # Ray Serve's model multiplexing: the call goes to a pool replica holding the adapter
                headers={"serve_multiplexed_model_id": name},
                timeout=aiohttp.ClientTimeout(total=deadline),
            ) as response:
                text = (await response.read()).decode(errors="replace")  # an engine's bytes may be anything
                status = response.status
        except TimeoutError:
            breaker.failed(self.clock(), admission)
            return failed(f"engine too slow: no answer within {deadline:.3g} s ({source})")
        except aiohttp.ClientError as error:
            breaker.failed(self.clock(), admission)
            return failed(f"engine unreachable: {error!r}")
        except BaseException:  # cancelled (the caller left): no outcome to learn from
            breaker.abandoned(admission)
            raise
        if status != 200:
            return failed(self._engine_refused(breaker, admission, name, status, text))
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            breaker.failed(self.clock(), admission)
            return failed(f"engine answered 200 with no JSON: {text[:300]}")
        problem = _not_a_chat_completion(answer)
        if problem is not None:
            breaker.failed(self.clock(), admission)
            return failed(f"engine answered 200 with {problem}: {text[:300]}")
        breaker.succeeded(self.clock(), admission, time.perf_counter() - started)
        choice = (answer.get("choices") or [{}])[0]
        score = signal_value(rule.signal, token_logprobs(choice)) if rule is not None else None
        if rule is not None and not body.get("logprobs"):
            for item in answer.get("choices") or []:
                item.pop("logprobs", None)
        return SpecialistAnswer(route.specialist, version, answer, time.perf_counter() - started, None, score)

    async def open_stream(
        self,
        body: dict[str, Any],
        route: SpecialistRoute,
        version: str,
        admission: Admission = Admission.ASK,
    ) -> SpecialistStream | SpecialistAnswer:
        """The version's streamed answer once its first bytes are in, or why there is none.

        A failure before the first bytes (unreachable, an error status, an error event or
        the end of the stream first, nothing within the version's deadline for first bytes)
        comes back as a :class:`SpecialistAnswer` with its error, as :meth:`ask` gives it:
        the call can still go to the teacher. Past the first bytes, a silence longer than
        ``router.timeout_seconds`` breaks the stream. Usage is always asked for (the call
        record keeps it).
        """
        attempt = self._attempt(route, version, admission)
        started, failed, name, breaker = attempt.started, attempt.failed, attempt.name, attempt.breaker
        if attempt.failure is not None:
            return failed(attempt.failure)
        request = {
            **unstreamed(body),
            "model": name,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        wait = self.settings.timeout_seconds
        deadline, source = self._deadline(breaker, admission, first_bytes=True)
        response: aiohttp.ClientResponse | None = None
        text, first = "", b""
        try:
            async with asyncio.timeout(deadline):
                response = await self.session.post(
                    self.chat_url,
                    json=request,
                    headers={"serve_multiplexed_model_id": name},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=wait, sock_read=wait),
                )
                if response.status != 200:
                    text = await response.text()
                else:
                    first = await response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as error:
            breaker.failed(self.clock(), admission)
            if response is not None:
                response.release()
            if isinstance(error, TimeoutError):
                return failed(f"engine too slow: no first token within {deadline:.3g} s ({source})")
            if response is None:
                return failed(f"engine unreachable: {error!r}")
            return failed(f"engine broke off before its first token: {error!r}")
        except BaseException:  # cancelled (the caller left): no outcome to learn from
            if response is not None:
                response.release()
            breaker.abandoned(admission)
            raise
        if response.status != 200:
            response.release()
            return failed(self._engine_refused(breaker, admission, name, response.status, text))
        problem = _stream_opening_error(first)
        if problem is not None:
            response.release()
            breaker.failed(self.clock(), admission)
            return failed(problem)
        breaker.succeeded(self.clock(), admission, time.perf_counter() - started, first_bytes=True)
        return SpecialistStream(route.specialist, version, response, first, started)

    def verdict(
        self, route: SpecialistRoute, answer: SpecialistAnswer, tools: list[dict[str, Any]] | None
    ) -> tuple[RouteReason, str] | None:
        """Why the answer must not be returned (fallback reason and detail); None when it may."""
        if answer.error is not None or answer.body is None:
            return RouteReason.FALLBACK_SPECIALIST_ERROR, answer.error or "no answer"
        problem = rejection(route.fallback, answer.message, tools)
        if problem is not None:
            return RouteReason.FALLBACK_INVALID_OUTPUT, problem
        rule = confidence_rule(route, answer.version)
        if rule is not None and (answer.confidence is None or answer.confidence < rule.threshold):
            shown = "none" if answer.confidence is None else f"{answer.confidence:.3f}"
            return (
                RouteReason.FALLBACK_LOW_CONFIDENCE,
                f"{rule.signal.value} token probability {shown} < {rule.threshold:.4g} ({rule.source})",
            )
        return None

    def agreement(
        self, decision: RouteDecision, predicted: dict[str, Any], teacher: dict[str, Any]
    ) -> float | None:
        """A specialist answer's score against the teacher's, with the Specialist's own metric.

        The route's ``metric`` (the Specialist's evaluation.metric) decides; ``auto`` or none
        resolves from the task's output kind. None when neither the route nor the task is known.
        """
        route = self.table.for_specialist(decision.specialist or "")
        metric = route.metric if route is not None and route.metric is not None else EvaluationMetric.AUTO
        if metric is EvaluationMetric.AUTO:
            task = self.tasks.get(decision.task_id or "")
            if task is None:
                return None
            metric = resolve_metric(metric, OutputKind(task.output_kind))
        return scorer(metric)(predicted, teacher)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._session is not None:
            await self._session.close()
        if self.embeddings is not None:
            self.embeddings.close()


def unstreamed(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request without its streaming options (the caller's choice, not the upstream's)."""
    return {key: value for key, value in body.items() if key not in ("stream", "stream_options")}


@dataclass(frozen=True)
class _Attempt:
    specialist: str
    version: str
    name: str  # the adapter name the engine serves it under
    breaker: Breaker
    started: float  # time.perf_counter() when it began
    failure: str | None = None  # why the pool could not serve it (marked failed): not asked

    def failed(self, message: str) -> SpecialistAnswer:
        """No answer from the version, and why."""
        return SpecialistAnswer(
            self.specialist, self.version, None, time.perf_counter() - self.started, message
        )


def _not_a_chat_completion(answer: object) -> str | None:
    """Why an engine's JSON is no chat completion the gateway can return or check (None if it is one)."""
    if not isinstance(answer, dict):
        return "JSON that is not an object"
    try:
        ChatResponse.model_validate(answer)
        if answer.get("usage") is not None:
            Usage.model_validate(answer["usage"])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return f"no chat completion ({where}: {first['msg']})"
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "no choices"
    return None


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


def _stream_opening_error(first: bytes) -> str | None:
    """Why the first bytes of an engine's stream are no answer (empty, not SSE, or an error event)."""
    if not first.strip():
        return "engine ended the stream before its first token"
    head = first.lstrip()
    if not head.startswith(_SSE_FIELDS):
        return f"engine answered 200 with no event stream: {first[:300].decode(errors='replace')}"
    if not head.startswith(b"data:"):
        return None
    try:
        event = json.loads(head[5:].split(b"\n", 1)[0])
    except ValueError:
        return None
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        return f"engine stream began with an error: {json.dumps(event['error'])[:300]}"
    return None
