"""How the events sender reads every kind of answer (a real aiohttp server on loopback)."""

from __future__ import annotations

import email.utils
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from forwarder.clock import FakeClock
from forwarder.errors import InvalidCredentials, PermanentSendError, RetryableSendError
from forwarder.okta.events import MAX_RESET_WAIT_S, RiskEventsSender
from forwarder.signals import RiskLevel, Signal
from tests.fake_okta import events_routes, events_sender, fake_okta


@dataclass
class Answer:
    status: int = 202
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Env:
    clock: FakeClock
    answer: Answer
    sender: RiskEventsSender


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    answer = Answer()

    async def events(_: web.Request) -> web.Response:
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async with fake_okta(events_routes(events)) as url, aiohttp.ClientSession() as session:
        yield Env(clock, answer, events_sender(session, url, clock))


SIGNALS = [Signal("192.0.2.1", RiskLevel.HIGH, "", 1_800_000_000_000, None, 1_800_000_000_000)]


async def _nothing() -> None:
    return None


async def send(env: Env) -> None:
    await env.sender.send(SIGNALS, spend=_nothing)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(408, "timeout"), (425, "server_error"), (502, "server_error"), (409, "client_error")],
)
async def test_answers_that_say_nothing_of_the_payload_keep_the_batch(
    env: Env, status: int, outcome: str
) -> None:
    """408, 425, 5xx and unknown 4xx are retried, never dead-lettered."""
    env.answer.status = status
    with pytest.raises(RetryableSendError) as err:
        await send(env)
    assert err.value.outcome == outcome


async def test_non_utf8_error_page_is_read_not_fatal(env: Env) -> None:
    """A proxy's Latin-1 error page is a retryable 502, not a crash."""
    env.answer.status = 502
    env.answer.body = b"<html>Bad gateway \xe9</html>"
    with pytest.raises(RetryableSendError):
        await send(env)


@pytest.mark.parametrize("status", [400, 422])
async def test_payload_rejections_are_permanent(env: Env, status: int) -> None:
    """400 and 422 carry Okta's causes and go to the dead letters."""
    env.answer.status = status
    env.answer.body = b'{"errorCode":"E0000001","errorSummary":"Api validation failed",' + (
        b'"errorCauses":[{"errorSummary":"subjects: too many"}]}'
    )
    with pytest.raises(PermanentSendError) as err:
        await send(env)
    assert err.value.causes == ["E0000001: Api validation failed", "subjects: too many"]


async def test_too_large_asks_for_smaller_calls(env: Env) -> None:
    """413 keeps the batch and asks the dispatcher to split it."""
    env.answer.status = 413
    with pytest.raises(RetryableSendError) as err:
        await send(env)
    assert err.value.shrink


@pytest.mark.parametrize(("status", "hint"), [(302, "org_url"), (307, "org_url"), (407, "PROXY")])
async def test_redirects_and_proxy_auth_need_an_operator(env: Env, status: int, hint: str) -> None:
    """3xx and 407 mark the provider failing with a hint, not a dead letter."""
    env.answer.status = status
    env.answer.headers = {"Location": "https://elsewhere.example"}
    with pytest.raises(InvalidCredentials) as err:
        await send(env)
    assert hint in err.value.hint


async def test_absurd_reset_is_capped(env: Env) -> None:
    """A Reset in milliseconds (or from a proxy) cannot block a provider for years."""
    env.answer.status = 429
    now = env.clock.time()
    env.answer.headers = {
        "X-Rate-Limit-Limit": "3",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Reset": str(int(now * 1000)),
        "Date": email.utils.formatdate(now, usegmt=True),
    }
    with pytest.raises(RetryableSendError) as err:
        await send(env)
    assert err.value.retry_at is not None
    assert err.value.retry_at - now <= MAX_RESET_WAIT_S


def _cause_body(*causes: str) -> bytes:
    return json.dumps(
        {
            "errorCode": "E0000001",
            "errorSummary": "Api validation failed",
            "errorCauses": [{"errorSummary": c} for c in causes],
        }
    ).encode()


def _batch() -> list[Signal]:
    now = 1_800_000_000_000
    lasting = [Signal(f"198.18.0.{i}", RiskLevel.LOW, "", now, None, now) for i in range(60)]
    return [*lasting, Signal("192.0.2.9", RiskLevel.HIGH, "", now, now + 600_000, now)]


async def test_causes_naming_subjects_blame_those_signals(env: Env) -> None:
    """events[i].subjects[j] maps back to the signal it was built from; events[i] to all of it."""
    batch = _batch()  # payload: event 0 holds the expiring signal, events 1-2 the other 60
    env.answer.status = 400
    env.answer.body = _cause_body(
        "events[2].subjects[3].ip: must be a valid IPv4 or IPv6 address",
        "events[0].expiresAt: must be in the future",
    )
    with pytest.raises(PermanentSendError) as err:
        await env.sender.send(batch, spend=_nothing)
    blamed = {s.ip: causes for s, causes in err.value.rejected}
    assert blamed == {
        "192.0.2.9": ["events[0].expiresAt: must be in the future"],
        "198.18.0.53": ["events[2].subjects[3].ip: must be a valid IPv4 or IPv6 address"],
    }


@pytest.mark.parametrize(
    "cause",
    ["events: must contain at most 20 events", "events[7].subjects[0].ip: bad", "and 3 more"],
)
async def test_a_cause_naming_nothing_blames_the_whole_batch(env: Env, cause: str) -> None:
    """If any cause cannot be traced to a subject, no signal is singled out."""
    env.answer.status = 400
    env.answer.body = _cause_body("events[1].subjects[0].ip: bad", cause)
    with pytest.raises(PermanentSendError) as err:
        await env.sender.send(_batch(), spend=_nothing)
    assert err.value.rejected == []


async def test_rate_headers_take_ascii_digits_only(env: Env) -> None:
    """A Reset of fullwidth digits or with underscores is ignored, not read as a number."""
    env.answer.status = 429
    env.answer.headers = {"X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": "1_800_000_060"}
    with pytest.raises(RetryableSendError) as err:
        await send(env)
    assert err.value.retry_at is None
    assert err.value.window is not None
    assert err.value.window.remaining == 0
