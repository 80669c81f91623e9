"""How a call reaches an inference worker and its answer comes back: Redis, no broker.

A Celery round trip cost every call a task message (kombu's envelope, its own
serialization, a queue per worker), a result-backend write and the gateway's polling of
it: milliseconds a single-input call is made of. Interactive calls now travel on one
Redis stream, and answers on one Redis list per request:

- the gateway `XADD`s the request (`InferenceRequest.to_dict()` as JSON) to
  ``REQUESTS``, capped at ``REQUESTS_MAXLEN`` entries (Redis trims the oldest: a bound on
  memory, never reached in normal running because workers read at once);
- every inference worker reads it through one consumer group (``XREADGROUP ... NOACK``:
  each request goes to one worker, read in batches of up to 64, acknowledged as it is
  read: a worker that dies mid-request does not hand it to another, as with Celery's
  early ack; the caller's deadline answers it) and hands each to its engine;
- the answer (``InferenceResult`` or ``InferenceError`` as JSON) is `LPUSH`ed to
  ``answer_key(request_id)`` with a short TTL; the gateway `BLPOP`s it (no polling);
- streamed tokens still travel on their own stream (``protocol.stream_key``);
- each worker refreshes its name in the ``WORKERS`` sorted set every second; a gateway
  with no answer after 2 s asks it whether any worker is alive (503 at once otherwise).

Workers stay share-nothing: more workers on more machines join the same group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from serving import protocol

logger = logging.getLogger(__name__)

REQUESTS = "serving:requests"
GROUP = "inference"
WORKERS = "serving:workers"
REQUESTS_MAXLEN = 20_000
ANSWER_TTL_SECONDS = 60
HEARTBEAT_SECONDS = 1.0
ALIVE_SECONDS = 5.0  # a worker unseen this long is gone
READ_COUNT = 64


def answer_key(request_id: str) -> str:
    return f"serving:answer:{request_id}"


class NoAnswer(Exception):
    """Nothing came back within the wait."""


# --- the gateway's side (sync; serving.gateway_async has the async twins) -----------------


_groups_made: set[int] = set()


def ensure_group(client: redis.Redis) -> None:
    """The consumer group exists before the first request is added, so a request sent
    while no worker has started yet waits in the stream for the first one (a group made
    later would start after it)."""
    try:
        client.xgroup_create(REQUESTS, GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:  # BUSYGROUP: it exists
        if "BUSYGROUP" not in str(exc):
            raise


def send(client: redis.Redis, request: protocol.InferenceRequest) -> None:
    if id(client) not in _groups_made:
        ensure_group(client)
        _groups_made.add(id(client))
    client.xadd(
        REQUESTS,
        {"r": json.dumps(request.to_dict())},
        maxlen=REQUESTS_MAXLEN,
        approximate=True,
    )


def wait(client: redis.Redis, request_id: str, *, timeout: float) -> dict:
    """The worker's answer (a protocol dict), or NoAnswer within `timeout` seconds."""
    reply = client.blpop([answer_key(request_id)], timeout=max(timeout, 0.01))
    if reply is None:
        raise NoAnswer(request_id)
    return json.loads(reply[1])


def workers_alive(client: redis.Redis, *, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return bool(client.zcount(WORKERS, now - ALIVE_SECONDS, "+inf"))


# --- the worker's side ----------------------------------------------------------------------


class Consumer:
    """Reads requests in batches and hands each to `answer(request_dict) -> dict` in a
    thread of its own (the engine's batcher joins them into forward passes), pushes each
    answer to its list, and calls `finished(request_dict, answer)` (settling a stream's
    ledger row). One per worker process."""

    def __init__(
        self,
        client: redis.Redis,
        answer: Callable[[dict], dict],
        *,
        finished: Callable[[dict, dict], None] | None = None,
        threads: int = 64,
        name: str | None = None,
    ) -> None:
        self.client = client
        self.answer = answer
        self.finished = finished
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="serving-call")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Consumer:
        ensure_group(self.client)
        for target, name in ((self._read_loop, "serving-read"), (self._beat, "serving-beat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(WORKERS, self.name)
        for thread in self._threads:
            thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.time()
                pipe = self.client.pipeline(transaction=False)
                pipe.zadd(WORKERS, {self.name: now})
                pipe.zremrangebyscore(WORKERS, "-inf", now - 10 * ALIVE_SECONDS)
                pipe.execute()
            except redis.RedisError:
                logger.warning("serving: heartbeat failed", exc_info=True)
            self._stop.wait(HEARTBEAT_SECONDS)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.client.xreadgroup(
                    GROUP, self.name, {REQUESTS: ">"}, count=READ_COUNT, block=500, noack=True
                )
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (a flushed Redis)
                    ensure_group(self.client)
                    continue
                logger.exception("serving: reading requests failed")
                self._stop.wait(1)
                continue
            except redis.RedisError:
                logger.warning("serving: Redis unreachable; retrying", exc_info=True)
                self._stop.wait(1)
                continue
            for _stream, entries in reply or []:
                for _entry_id, fields in entries:
                    raw = fields.get(b"r") or fields.get("r")
                    try:
                        request = json.loads(raw)
                    except (TypeError, ValueError):
                        logger.error("serving: an unreadable request was dropped")
                        continue
                    self.pool.submit(self._serve, request)

    def _serve(self, request: dict) -> None:
        request_id = str(request.get("request_id", ""))
        try:
            answer = self.answer(request)
        except Exception as exc:  # the engine answers errors itself; this is a bug
            logger.exception("serving: request %s failed", request_id)
            answer = protocol.InferenceError(
                request_id, protocol.ErrorCode.ENGINE_ERROR, f"Engine error: {exc}"
            ).to_dict()
        if request_id:
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.lpush(answer_key(request_id), json.dumps(answer))
                pipe.expire(answer_key(request_id), ANSWER_TTL_SECONDS)
                pipe.execute()
            except redis.RedisError:
                logger.exception("serving: the answer to %s was lost", request_id)
        if self.finished is not None:
            try:
                self.finished(request, answer)
            except Exception:
                logger.exception("serving: after %s", request_id)
