"""The writer of the two side topics, sharing one producer: the dead-letter topic (bounded
dead letters of bad records, bounded retries, counted drops) and the review topic (samples of
degraded models' events); ``flush`` waits until the broker has the review samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    BrokerResponseError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from monitor.config.settings import KafkaSettings
from monitor.engine.events import BadRecord
from monitor.errors import BrokerUnavailableError
from monitor.kafka.consumer import EventConsumer
from monitor.kafka.quirks import being_cancelled
from monitor.kafka.topics import ensure_topics
from monitor.observability.metrics import Metrics

__all__ = ["DEAD_LETTER_HEADERS_MAX", "DEAD_LETTER_KEY_MAX", "SideTopicWriter", "retriable"]

log = logging.getLogger(__name__)

#: Original headers kept on a dead letter, in order, up to this many bytes in all; the rest
#: are dropped and counted in ``driftwarden.headers.dropped``.
DEAD_LETTER_HEADERS_MAX = 64 * 1024
#: A longer record key is cut to this on the dead letter (``driftwarden.key.truncated``).
DEAD_LETTER_KEY_MAX = 4096
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_NOT_AUTHORIZED = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)


#: Refusals of the record itself: retrying the same bytes cannot pass.
_REFUSED = (
    *_TOO_LARGE,
    *_NOT_AUTHORIZED,
    InvalidTopicError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
    PolicyViolationError,
)


def retriable(err: BaseException) -> bool:
    """Whether a produce error may pass on retry (the broker down, slow, recreating the
    topic, or answering an error it does not name), as opposed to a refusal of this record
    (too large, not authorized, invalid topic) or a failure of ours (not a Kafka error)."""
    if isinstance(err, TimeoutError | OSError):
        return True
    return isinstance(err, KafkaError) and not isinstance(err, _REFUSED)


#: Every ``reason`` label of driftwarden_dead_letters_dropped_total, exported from the start.
DROP_REASONS = ("too_large", "not_authorized", "invalid_topic", "rejected")


def _drop_reason(err: BaseException) -> str:
    if isinstance(err, _TOO_LARGE):
        return "too_large"
    if isinstance(err, _NOT_AUTHORIZED):
        return "not_authorized"
    if isinstance(err, InvalidTopicError):
        return "invalid_topic"
    return "rejected"


DeadLetter = tuple[ConsumerRecord[bytes, bytes], BadRecord]


class SideTopicWriter:
    """Writes to both side topics: bad records (original bytes and headers) to the dead-letter
    topic with ``write_dead_letters``, review samples with ``send``; ``flush`` waits until the
    broker has every ``send``.

    A dead letter is bounded by ``kafka.dead_letter_max_bytes`` (key, headers and value are
    cut to fit, and say so in headers); ``write_dead_letters`` retries what the broker may
    take later for ``kafka.dead_letter_retry_s`` and drops (counts, logs) what it refuses.
    """

    def __init__(self, settings: KafkaSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        for reason in DROP_REASONS:  # a rate over a series that exists from the start
            metrics.dead_letters_dropped.labels(reason)
        self._producer: AIOKafkaProducer | None = None
        self._inflight: list[asyncio.Future[Any]] = []
        #: Dead letters sent, not yet acknowledged, with what they stand for.
        self._dead_inflight: list[tuple[asyncio.Future[Any], ConsumerRecord[bytes, bytes]]] = []
        #: Source records whose dead letter the broker refused as too large: sent without
        #: their value on the next attempt.
        self._valueless: set[tuple[str, int, int]] = set()
        self._log_window: dict[str, tuple[float, int]] = {}
        #: Since when the dead letters of the batch in flight cannot be written (None: they
        #: can), and the last error: /readyz tells it instead of guessing.
        self.failing_since: float | None = None
        self.last_error = ""
        #: The consumer whose broker view this writer shares (wired by the daemon): a write
        #: stuck on a dead broker shows on /readyz and broker_up, and after any outage the
        #: side topics are checked before the next write.
        self.broker: EventConsumer | None = None
        self._outages_checked = 0

    async def start(self) -> None:
        if self._producer is not None:
            return
        s = self.settings
        producer = AIOKafkaProducer(
            acks="all",
            linger_ms=5,
            # What it sends: dead letters bounded by dead_letter_max_bytes, and review
            # samples, re-encoded events of at most max_record_bytes (twice: escaping).
            max_request_size=max(s.dead_letter_max_bytes, 2 * s.max_record_bytes) + 1024,
            **s.client_options(),
        )
        try:
            await asyncio.wait_for(producer.start(), s.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), s.broker_timeout_s)
            raise BrokerUnavailableError(
                f"cannot start the Kafka producer for {s.bootstrap_servers!r}: {err!r}"
            ) from err
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError, OSError) as err:
            log.warning("dead-letter producer did not stop cleanly: %r", err)
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            log.warning("dead-letter producer stop interrupted by aiokafka")

    def bounded(
        self, record: ConsumerRecord[bytes, bytes], bad: BadRecord, *, with_value: bool = True
    ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        """The dead letter of ``record``: (key, value, headers), at most
        ``dead_letter_max_bytes`` when serialized."""
        ours: list[tuple[str, bytes]] = [
            ("driftwarden.reason", bad.reason.value.encode()),
            ("driftwarden.detail", bad.detail.encode(errors="backslashreplace")[:1000]),
            ("driftwarden.source.topic", record.topic.encode()),
            ("driftwarden.source.partition", str(record.partition).encode()),
            ("driftwarden.source.offset", str(record.offset).encode()),
        ]
        kept: list[tuple[str, bytes]] = []
        size = 0
        original = list(record.headers or ())
        for name, header_value in original:
            size += len(name.encode(errors="backslashreplace")) + len(header_value or b"") + 8
            if size > DEAD_LETTER_HEADERS_MAX:
                break
            kept.append((name, header_value))
        if len(kept) < len(original):
            ours.append(("driftwarden.headers.dropped", str(len(original) - len(kept)).encode()))
        key = record.key
        if key is not None and len(key) > DEAD_LETTER_KEY_MAX:
            ours.append(("driftwarden.key.truncated", str(len(key)).encode()))
            key = key[:DEAD_LETTER_KEY_MAX]
        value = record.value
        if value is not None and not with_value:
            ours.append(("driftwarden.truncated", str(len(value)).encode()))
            value = b""
        headers = kept + ours
        if value is not None:
            # The header that would say so counts in the room left for the value.
            marker = ("driftwarden.truncated", str(len(value)).encode())
            room = (
                self.settings.dead_letter_max_bytes
                - DefaultRecordBatchBuilder.estimate_size_in_bytes(key, b"", [*headers, marker])
                - 16
            )  # the value's length varint and rounding
            if len(value) > room:
                headers.append(marker)
                value = value[: max(0, room)]
        elif key is None:
            value = b""  # a record with neither: Kafka needs one of them
        return key, value, headers

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], bad: BadRecord) -> None:
        """Send one bounded dead letter; ``write_dead_letters`` waits for its acknowledgement."""
        coordinates = (record.topic, record.partition, record.offset)
        key, value, headers = self.bounded(
            record, bad, with_value=coordinates not in self._valueless
        )
        self._log_rate_limited(record, bad)
        future = await self._send(self.settings.dead_letter_topic, value, key=key, headers=headers)
        if any(name == "driftwarden.truncated" for name, _ in headers):
            future.add_done_callback(self._count_truncated)
        self._dead_inflight.append((future, record))

    def _count_truncated(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.metrics.dead_letters_truncated.inc()

    async def write_dead_letters(
        self, bad: list[DeadLetter], *, stopping: Callable[[], bool] = lambda: False
    ) -> bool:
        """Write every dead letter of ``bad``; True once each is acknowledged or, refused for
        good by the broker, counted as dropped. False when the broker stayed unreachable for
        ``dead_letter_retry_s`` or ``stopping()`` turned true meanwhile (nothing is lost:
        the caller does not commit the batch)."""
        deadline = time.monotonic() + self.settings.dead_letter_retry_s
        pending = bad
        for attempt in itertools.count(1):
            failures = await self._attempt(pending)
            retry: list[DeadLetter] = []
            for record, bad_record, err in failures:
                coordinates = (record.topic, record.partition, record.offset)
                if isinstance(err, _TOO_LARGE) and coordinates not in self._valueless:
                    self._valueless.add(coordinates)
                    retry.append((record, bad_record))
                elif retriable(err):
                    retry.append((record, bad_record))
                else:
                    self._drop(record, err)
            if not retry:
                self._valueless.clear()
                self.failing_since = None
                return True
            pending = retry
            errors = {repr(err) for _, _, err in failures if retriable(err)}
            if errors:
                self.last_error = sorted(errors)[0][:300]
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
            left = deadline - time.monotonic()
            if stopping() or left <= 0:
                log.error(
                    "%d dead letters not written after %d attempts: %s",
                    len(pending),
                    attempt,
                    self.last_error,
                )
                return False
            if errors:
                log.warning(
                    "dead-letter write failed (attempt %d, %d records): %s",
                    attempt,
                    len(pending),
                    self.last_error,
                )
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt, left))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, pending: list[DeadLetter]
    ) -> list[tuple[ConsumerRecord[bytes, bytes], BadRecord, BaseException]]:
        """Send ``pending`` and wait for the broker; return the records that failed, why."""
        failures: list[tuple[ConsumerRecord[bytes, bytes], BadRecord, BaseException]] = []
        sent: dict[tuple[str, int, int], BadRecord] = {}
        self._dead_inflight = []  # an attempt cancelled midway leaves nothing to wait for
        for i, (record, bad_record) in enumerate(pending):
            try:
                await self.dead_letter(record, bad_record)
            except Exception as err:
                failures.append((record, bad_record, err))
                if retriable(err):  # the broker is away: the rest would wait as long
                    failures += [(r, b, err) for r, b in pending[i + 1 :]]
                    break
                continue
            sent[(record.topic, record.partition, record.offset)] = bad_record
        inflight, self._dead_inflight = self._dead_inflight, []
        if not inflight:
            return failures
        _, waiting = await asyncio.wait(
            [future for future, _ in inflight], timeout=self.settings.broker_timeout_s
        )
        acknowledged = 0
        for future, record in inflight:
            bad_record = sent[(record.topic, record.partition, record.offset)]  # sent above
            if future in waiting:
                future.cancel()
                failures.append((record, bad_record, TimeoutError("dead letter not acknowledged")))
            elif (refused := future.exception()) is not None:
                failures.append((record, bad_record, refused))
            else:
                acknowledged += 1
        self.metrics.dead_lettered.inc(acknowledged)
        if acknowledged or any(isinstance(err, BrokerResponseError) for *_, err in failures):
            self._report(True)  # the broker answered
        if any(retriable(err) for *_, err in failures):
            await self._check_broker()
        return failures

    async def _check_broker(self) -> None:
        # A dead letter that timed out does not prove the broker down (its partition's
        # leader may be slow while the consumer's broker answers): /readyz says
        # "unreachable" only when a metadata request fails too.
        broker = self.broker
        if broker is None:
            return
        try:
            await broker.probe()
        except RuntimeError:  # not started: no view to ask
            self._report(False)

    def _drop(self, record: ConsumerRecord[bytes, bytes], err: BaseException) -> None:
        reason = _drop_reason(err)
        self.metrics.dead_letters_dropped.labels(reason).inc()
        now = time.monotonic()
        started, suppressed = self._log_window.get(f"drop:{reason}", (0.0, -1))
        if now - started >= 10.0 or suppressed < 0:
            log.error(
                "dead letter of %s[%d]@%d dropped (%s), the broker refuses it: %r%s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                err,
                f" ({suppressed} more like it not logged)" if suppressed > 0 else "",
            )
            self._log_window[f"drop:{reason}"] = (now, 0)
        else:
            self._log_window[f"drop:{reason}"] = (started, suppressed + 1)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send a side record (a review sample); ``flush`` waits for it."""
        try:
            future = await self._send(topic, value, key=key, headers=headers)
        except (TimeoutError, KafkaError) as err:
            if retriable(err):
                self._report(False)
            raise
        self._inflight.append(future)

    async def _send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        producer = self._producer
        if producer is None:
            raise RuntimeError("SideTopicWriter is not started")
        await self._recreate_lost_topics()
        future: asyncio.Future[Any] = await asyncio.wait_for(
            producer.send(topic, value=value, key=key, headers=headers),
            self.settings.broker_timeout_s,
        )
        return future

    async def flush(self) -> None:
        """Wait until every side record sent so far is acknowledged; raise if one failed."""
        inflight, self._inflight = self._inflight, []
        if not inflight:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*inflight), self.settings.broker_timeout_s)
        except (TimeoutError, KafkaError) as err:
            if retriable(err):
                self._report(False)
            raise
        self._report(True)

    def _report(self, ok: bool) -> None:
        if self.broker is not None:
            self.broker.mark_broker(ok)

    async def _recreate_lost_topics(self) -> None:
        # A broker that lost its data (Tansu keeps none across a restart, see
        # monitor.kafka.quirks) acknowledges writes to a topic it no longer has, then drops
        # them when the topic is created again: so the topics are created first, with the
        # partitions given at start (nothing is created where they still exist).
        broker = self.broker
        if broker is None or broker.outages == self._outages_checked:
            return
        if self.settings.create_topics:
            s = self.settings
            try:
                await ensure_topics(
                    s,
                    {s.dead_letter_topic: {"partitions": 1}, s.review_topic: {"partitions": 1}},
                    s.broker_timeout_s,
                )
            except (TimeoutError, KafkaError, OSError):
                self._report(False)
                raise
        self._outages_checked = broker.outages

    def _log_rate_limited(self, record: ConsumerRecord[bytes, bytes], bad: BadRecord) -> None:
        # One line per reason per 10 s, with the count of the lines it stood for.
        now = time.monotonic()
        reason = bad.reason.value
        started, suppressed = self._log_window.get(reason, (0.0, -1))
        if now - started >= 10.0 or suppressed < 0:
            log.warning(
                "bad record at %s[%d]@%d: %s: %s%s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                bad.detail,
                f" ({suppressed} more like it not logged)" if suppressed > 0 else "",
            )
            self._log_window[reason] = (now, 0)
        else:
            self._log_window[reason] = (started, suppressed + 1)
