"""The callback-URL channel: registration checks and in-order delivery with retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp

from bridge.simulator import channel as ch

MAX_CALLBACK_CHARS = 400  # URL plus header values, as the service limits them
RETRY_DELAY_FIRST = 0.05
RETRY_DELAY_MAX = 5.0


def parse_callback(body: bytes) -> tuple[str, dict[str, str]]:
    """URL and headers from a ``PUT /notification/callback`` body; ValueError says why not."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("callback body must be JSON {url, headers}") from None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise ValueError('callback body must be {"url": "...", "headers": {...}}')
    url: str = data["url"]
    headers = data.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError("callback headers must be an object of strings")
    if not url.startswith(("http://", "https://")):
        raise ValueError("callback url must be http:// or https://")
    if len(url) + sum(len(v) for v in headers.values()) > MAX_CALLBACK_CHARS:
        raise ValueError(f"callback url plus header values exceed {MAX_CALLBACK_CHARS} characters")
    return url, dict(headers)


async def check_reachable(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> str | None:
    """None when the URL takes an (empty) message with a 2xx answer, else the problem."""
    try:
        async with session.put(
            url,
            data=b"{}",
            headers={**headers, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=5.0),
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return None
            return f"it answered {resp.status} to a test message"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        return type(exc).__name__


async def deliver_forever(
    outbox: ch.Outbox,
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    retry_period: float,
    count: Callable[[str, int], None],
    chunk: Callable[[], int | None] = lambda: None,
    keep: Callable[[], bool] = lambda: True,
) -> None:
    """PUT batches to the URL in order. A batch that fails is retried with doubling
    back-off for ``retry_period`` seconds, then dropped (counted) so later ones flow.
    Cancelled mid-batch (callback removed, emulator stopped): the batch goes back.
    ``chunk`` gives the most entries one message may carry (the channel's
    ``max_chunk_size``; None: the outbox's batch size); a batch cancelled mid-way goes
    back only while ``keep()`` (not when its channel was deleted meanwhile)."""
    send_headers = {**headers, "Content-Type": "application/json"}
    while True:
        await outbox.wait(None)
        batch = outbox.take(chunk())
        if not batch:
            continue
        body = ch.encode(batch)
        first_failure: float | None = None
        delay = RETRY_DELAY_FIRST
        try:
            while True:
                count("webhook_posts", 1)
                if await _put(session, url, body, send_headers):
                    count("delivered", len(batch))
                    break
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                remaining = first_failure + retry_period - now
                if remaining <= 0:
                    count("dropped", len(batch))
                    break
                count("retried", 1)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, RETRY_DELAY_MAX)
        except asyncio.CancelledError:
            if keep():
                outbox.put_back(batch)
            raise


async def _put(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> bool:
    try:
        async with session.put(url, data=body, headers=headers) as resp:
            await resp.read()
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False
