"""Circuit breakers and adaptive deadlines of specialist versions: the pure parts, the router's use."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.api.calls import ChatRequest, RouteReason, UpstreamKind
from protege.api.routes import RolloutStage
from protege.config import ConfigError, RouterSettings, Settings, load_settings
from protege.serving.router.breaker import (
    Admission,
    Breaker,
    BreakerPolicy,
    BreakerState,
    LatencyWindow,
)
from protege.serving.router.classify import TaskMatch
from protege.serving.router.router import Router
from protege.serving.router.table import Candidate, RoutingTable, SpecialistRoute

POLICY = BreakerPolicy(
    timeout=30, failures=3, cooldown=10, window=100, min_observations=10, quantile=0.99, margin=3, floor=2
)


# --- deadlines ---------------------------------------------------------------------------------


def test_the_deadline_is_the_timeout_until_enough_answers_were_timed() -> None:
    window = LatencyWindow(POLICY)
    for _ in range(9):
        window.observe(1.0)
        assert window.deadline == 30
    window.observe(1.0)  # the tenth: enough
    assert window.deadline == 3.0  # p99 1 s × margin 3


def test_the_deadline_is_a_high_quantile_times_the_margin_within_floor_and_timeout() -> None:
    window = LatencyWindow(POLICY)
    for _ in range(99):
        window.observe(1.0)
    window.observe(9.0)  # one outlier in 100: the 99th percentile (nearest rank) ignores it
    assert window.deadline == 3.0
    for _ in range(100):
        window.observe(0.1)  # fast answers: the floor holds
    assert window.deadline == 2.0
    for _ in range(100):
        window.observe(12.0)  # slow answers: never past router.timeout_seconds
    assert window.deadline == 30


def test_the_window_keeps_only_the_latest_answers() -> None:
    window = LatencyWindow(POLICY)
    for _ in range(100):
        window.observe(5.0)
    assert window.deadline == 15.0
    for _ in range(100):
        window.observe(1.0)  # the slow ones have left the window
    assert window.deadline == 3.0 and len(window.latencies) == 100


def test_whole_answers_and_first_bytes_have_their_own_deadlines() -> None:
    breaker = Breaker(POLICY)
    for _ in range(10):
        breaker.succeeded(0.0, Admission.ASK, 4.0)
        breaker.succeeded(0.0, Admission.ASK, 0.5, first_bytes=True)
    assert breaker.deadline(Admission.ASK) == 12.0
    assert breaker.deadline(Admission.ASK, first_bytes=True) == 2.0
    # a probe and a call naming the specialist wait the whole timeout
    assert breaker.deadline(Admission.PROBE) == breaker.deadline(Admission.BYPASS, first_bytes=True) == 30
    breaker.succeeded(0.0, Admission.ASK)  # an answer that is no latency to learn from (a 4xx)
    assert len(breaker.whole.latencies) == 10


# --- the breaker --------------------------------------------------------------------------------


def _breaker() -> tuple[Breaker, list[tuple[BreakerState, BreakerState]]]:
    moves: list[tuple[BreakerState, BreakerState]] = []
    return Breaker(POLICY, lambda old, new: moves.append((old, new))), moves


def test_consecutive_failures_open_the_breaker_and_a_success_between_resets_the_count() -> None:
    breaker, moves = _breaker()
    breaker.failed(0, Admission.ASK)
    breaker.failed(1, Admission.ASK)
    breaker.succeeded(2, Admission.ASK, 0.1)
    breaker.failed(3, Admission.ASK)
    breaker.failed(4, Admission.ASK)
    assert breaker.state is BreakerState.CLOSED and breaker.admit(4) is Admission.ASK
    breaker.failed(5, Admission.ASK)  # the third in a row
    assert breaker.state is BreakerState.OPEN and moves == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert breaker.admit(5) is Admission.REFUSE and breaker.admit(14.9) is Admission.REFUSE


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_the_breaker() -> None:
    breaker, moves = _breaker()
    for now in range(3):
        breaker.failed(now, Admission.ASK)
    assert breaker.admit(12.1) is Admission.PROBE  # opened at 2, cool-down 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert [breaker.admit(12.2 + i) for i in range(5)] == [Admission.REFUSE] * 5  # one probe at a time
    breaker.succeeded(13, Admission.PROBE, 0.3)
    assert breaker.state is BreakerState.CLOSED and breaker.admit(13) is Admission.ASK
    assert moves == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    breaker.failed(14, Admission.ASK)
    breaker.failed(15, Admission.ASK)
    assert breaker.state is BreakerState.CLOSED  # the count started again when it closed


def test_a_failed_probe_opens_the_breaker_for_another_cool_down() -> None:
    breaker, moves = _breaker()
    for now in range(3):
        breaker.failed(now, Admission.ASK)
    assert breaker.admit(20) is Admission.PROBE
    breaker.failed(50, Admission.PROBE)  # timed out after router.timeout_seconds
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(59) is Admission.REFUSE and breaker.admit(60) is Admission.PROBE
    assert moves[-2:] == [
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
    ]


def test_calls_that_began_before_it_opened_do_not_move_an_open_breaker() -> None:
    breaker, _ = _breaker()
    for now in range(3):
        breaker.failed(now, Admission.ASK)
    breaker.succeeded(3, Admission.ASK, 0.2)  # a late answer of a call asked while it was closed
    breaker.succeeded(4, Admission.BYPASS, 0.2)  # a call naming the specialist
    assert breaker.state is BreakerState.OPEN and breaker.admit(5) is Admission.REFUSE
    breaker.failed(11, Admission.ASK)  # a late failure does not push the cool-down back
    assert breaker.admit(12) is Admission.PROBE
    breaker.succeeded(12.5, Admission.ASK, 0.2)  # nor does a late success close it: the probe decides
    assert breaker.state is BreakerState.HALF_OPEN


def test_calls_naming_the_specialist_count_while_closed() -> None:
    breaker, _ = _breaker()
    for now in range(3):
        breaker.failed(now, Admission.BYPASS)
    assert breaker.state is BreakerState.OPEN


def test_a_probe_that_never_reports_frees_its_slot() -> None:
    breaker, _ = _breaker()
    for now in range(3):
        breaker.failed(now, Admission.ASK)
    assert breaker.admit(12) is Admission.PROBE
    breaker.abandoned(Admission.PROBE)  # its caller left
    assert breaker.admit(12.5) is Admission.PROBE
    assert breaker.admit(13) is Admission.REFUSE
    assert breaker.admit(12.5 + 30.5) is Admission.PROBE  # lost without a word: replaced past the timeout
    breaker.abandoned(Admission.ASK)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.admit(44) is Admission.REFUSE


# --- settings -----------------------------------------------------------------------------------


def test_the_settings_make_the_policy_and_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = BreakerPolicy.of(RouterSettings())
    assert (defaults.timeout, defaults.failures, defaults.cooldown) == (30, 5, 30)
    assert (defaults.quantile, defaults.margin, defaults.floor) == (0.99, 3, 2)
    assert (defaults.window, defaults.min_observations) == (200, 20)
    short = BreakerPolicy.of(RouterSettings(timeout_seconds=1))
    window = LatencyWindow(short)
    for _ in range(20):
        window.observe(0.01)
    assert window.deadline == 1  # a floor above the timeout gives way to it
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path))
    monkeypatch.setenv("PROTEGE_ROUTER__DEADLINE_MIN_OBSERVATIONS", "300")
    with pytest.raises(ConfigError, match=r"min_observations \(300\) exceeds router.deadline_window"):
        load_settings()
    monkeypatch.setenv("PROTEGE_ROUTER__DEADLINE_MIN_OBSERVATIONS", "20")
    monkeypatch.setenv("PROTEGE_ROUTER__BREAKER_FAILURES", "0")
    with pytest.raises(ConfigError, match="PROTEGE_ROUTER__BREAKER_FAILURES"):
        load_settings()


# --- the router's plans -------------------------------------------------------------------------


class OneTask:
    async def match(self, tenant: str, request: ChatRequest) -> TaskMatch:
        return TaskMatch("t1", None)


def _router(tmp_path: Path, route: SpecialistRoute) -> tuple[Router, list[float]]:
    settings = Settings(
        home=tmp_path,
        router={
            "enabled": True,
            "engine_url": "http://127.0.0.1:9",
            "breaker_failures": 2,
            "breaker_cooldown_seconds": 5,
        },
    )
    router = Router(settings)
    router.classifier = OneTask()  # type: ignore[assignment]
    router.table = RoutingTable(routes=[route])
    now = [100.0]
    router.clock = lambda: now[0]
    return router, now


CALL = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


async def test_an_open_breaker_sends_calls_to_the_teacher_and_keeps_shadow_calls_off_the_engine(
    tmp_path: Path,
) -> None:
    route = SpecialistRoute(
        specialist="intent",
        tenant="acme",
        task_id="t1",
        active="v1",
        candidate=Candidate(version="v2", stage=RolloutStage.SHADOW),
    )
    router, now = _router(tmp_path, route)
    plan = await router.plan("acme", CALL)
    assert plan.choice.version == "v1" and plan.choice.shadow == "v2" and plan.admission is Admission.ASK
    for _ in range(2):
        router.breaker("intent", "v1").failed(now[0], Admission.ASK)
        router.breaker("intent", "v2").failed(now[0], Admission.ASK)
    refused = await router.plan("acme", CALL)
    assert refused.choice.version is None and refused.choice.shadow is None  # neither is asked
    decision = refused.decision(UpstreamKind.TEACHER)
    assert decision.reason is RouteReason.BREAKER_OPEN and decision.version == "v1"
    assert decision.specialist == "intent" and decision.task_id == "t1"

    now[0] += 5  # the cool-down is over: the next call probes v1, and its shadow call probes v2
    probing = await router.plan("acme", CALL)
    assert probing.choice.version == "v1" and probing.admission is Admission.PROBE
    assert probing.choice.shadow == "v2" and probing.shadow_admission is Admission.PROBE
    assert (await router.plan("acme", CALL)).choice.reason is RouteReason.BREAKER_OPEN  # one probe
    router.abandon("intent", "v2", Admission.PROBE)  # the gateway had too many shadows in flight
    assert (await router.plan("acme", CALL)).shadow_admission is Admission.PROBE

    # a caller naming the specialist is never refused: nobody else can answer it
    pinned = await router.plan("acme", CALL.model_copy(update={"model": "intent"}))
    assert pinned.choice.version == "v1" and pinned.admission is Admission.BYPASS

    router.table = RoutingTable(routes=[route.model_copy(update={"candidate": None})])
    router.forget_unserved()  # v2 left the table: its breaker goes with it
    assert set(router.breakers) == {("intent", "v1")}
