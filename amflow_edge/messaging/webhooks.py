"""Webhook senders: outbox → one HTTP endpoint per [[webhooks]] target, in order, at least once.

AM-Vision's own sender posts each event once and forgets it; a plant that relied on it lost
events whenever its endpoint was down. Here each target has a thread of its own that posts the
outbox's events one at a time in order, and moves its position only on a 2xx, so a target that
is down resumes where it stopped and a slow one delays nobody else (capture and MQTT never wait
for it). The body is exactly the 3.7 envelope with the target's hook id and target; the event id
and a Standard Webhooks signature go in headers, so a receiver de-duplicates and authenticates.
The senders are not among the systemd watchdog's checks: a receiver that hangs is a target's state
(its failures and last error in the state topic), never a reason to restart the station and its capture.

What an answer means:
- 2xx: delivered.
- 408, 425, 429, 5xx, no answer: retried, the wait doubling from 1 s to max_backoff_s with full jitter
  (Retry-After is honoured up to that bound); once the target has been failing for dead_letter_after_s,
  what it could not take by then goes to its dead letters.
- any other 3xx/4xx: the receiver will not take it however often it is asked (a wrong URL, a
  revoked token, a schema it refuses): the target is parked with the answer in the state topic and
  the log, until its config changes or `amflow-edge outbox resume --target` says it was fixed.
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import structlog
from standardwebhooks.webhooks import Webhook

from amflow_edge import __version__
from amflow_edge.config.webhooks import WebhookTarget
from amflow_edge.messaging.payload import for_hook
from amflow_edge.messaging.webhook_ledger import PendingEvent, WebhookLedger, WebhookStatus
from amflow_edge.storage.db import StationDb

log = structlog.get_logger(__name__)

_BATCH = 50
_FIRST_BACKOFF_S = 1.0
_PARKED_CHECK_S = 5.0
_IDLE_S = 5.0
_RETRYABLE = frozenset({408, 425, 429})
_BODY_IN_REASON = 200
_ANSWER_BYTES = 4096


class RetryLaterError(Exception):
    """This attempt failed in a way that may pass: try again later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class RefusedError(Exception):
    """The receiver will not take this event however often it is asked; the target is parked."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def judge(response: httpx.Response, answer: str) -> None:
    """Raise RetryLaterError or RefusedError unless the answer (status, headers, the first bytes of its body)
    means delivered."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = answer[:_BODY_IN_REASON].strip().replace("\n", " ")
    said = f"HTTP {status} {response.reason_phrase}" + (f": {body}" if body else "")
    if status in _RETRYABLE or status >= 500:
        raise RetryLaterError(said, _retry_after(response))
    if 300 <= status < 400:
        where = urlsplit(response.headers.get("location", "")).path or "elsewhere"
        raise RefusedError(f"{said}; the target redirects to {where}: set its url to the final address")
    raise RefusedError(f"{said}; fix the receiver or this target's url or secret, then `amflow-edge outbox resume`")


class WebhookSender:
    """One target's thread."""

    def __init__(
        self,
        target: WebhookTarget,
        db: StationDb,
        station_id: str,
        on_change: Callable[[], None] = lambda: None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.target = target
        self._db = db
        self._ledger = WebhookLedger(db)
        self._station_id = station_id
        self._on_change = on_change
        self._signer = Webhook(target.secret.get_secret_value()) if target.secret is not None else None
        # The operating system's trust store (update-ca-certificates), where a plant installs its own CA; httpx's
        # default would be certifi's bundle.
        verify = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file is not None else None)
        self._client = httpx.Client(
            timeout=target.timeout_s,
            verify=verify,
            follow_redirects=False,
            headers={"User-Agent": f"amflow-edge/{__version__}", "Content-Type": "application/json"},
            transport=transport,
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._backoff_s = _FIRST_BACKOFF_S
        self._failing = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"webhook-{self.target.hook_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """A request in flight is left to finish or die with the process: its event was not marked delivered, so
        it is posted again at the next start, and the receiver de-duplicates by webhook-id."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                return
        self._client.close()

    def _run(self) -> None:
        # Losing a delivered mark costs a duplicate post, never an event: these commits need not wait for the disk.
        self._db.connection().execute("PRAGMA synchronous=NORMAL")
        while not self._stop.is_set():
            try:
                pause = self._step()
            except Exception:
                log.exception("webhook sender step failed; retrying", hook_id=self.target.hook_id)
                pause = _PARKED_CHECK_S
            if pause > 0:
                self._sleep(pause)

    def _sleep(self, seconds: float) -> None:
        """A backoff is not cut short by new events (that would hammer a failing receiver); idling is."""
        if self._backoff_s > _FIRST_BACKOFF_S:
            self._stop.wait(seconds)
        else:
            self._wake.wait(seconds)
            self._wake.clear()

    def _step(self) -> float:
        """Post what is pending; returns how long to wait before the next step."""
        target = self.target
        parked = self._ledger.parked_reason(target.hook_id) is not None
        if parked or self._failing:
            # Only a failing or parked target can have something to give up on (failing_since is set then).
            self._give_up_on_old()
        if parked:
            return _PARKED_CHECK_S
        pending = self._ledger.pending(target.hook_id, target.events, _BATCH)
        if not pending:
            return _IDLE_S
        for event in pending:
            if self._stop.is_set():
                return 0.0
            try:
                self._post(event)
            except RetryLaterError as failure:
                return self._failed(failure)
            except RefusedError as refusal:
                self._ledger.park(target.hook_id, str(refusal))
                log.error(
                    "webhook target refused an event; it is parked until fixed",
                    hook_id=target.hook_id,
                    url=target.display_url,
                    event_id=event.event_id,
                    reason=str(refusal),
                )
                self._on_change()
                return _PARKED_CHECK_S
            recovering = self._backoff_s > _FIRST_BACKOFF_S
            current = self._ledger.delivered(target.hook_id, event)
            self._failing = False
            self._backoff_s = _FIRST_BACKOFF_S
            if recovering:
                log.info("webhook target delivering again", hook_id=target.hook_id, url=target.display_url)
                self._on_change()
            if not current:
                return 0.0  # replayed or given up on meanwhile: read again from the new position
        return 0.0

    def _failed(self, failure: RetryLaterError) -> float:
        target = self.target
        failures = self._ledger.failed(target.hook_id, failure.reason)
        self._failing = True
        wait = random.uniform(0, self._backoff_s)
        if failure.retry_after_s is not None:
            wait = max(wait, min(failure.retry_after_s, target.max_backoff_s))
        self._backoff_s = min(self._backoff_s * 2, target.max_backoff_s)
        log.warning(
            "webhook delivery failed; retrying",
            hook_id=target.hook_id,
            url=target.display_url,
            reason=failure.reason,
            failures=failures,
            retry_in_s=round(wait, 1),
        )
        if failures == 1:
            self._on_change()
        return max(wait, 0.05)

    def _give_up_on_old(self) -> None:
        target = self.target
        moved = self._ledger.give_up_if_failing_too_long(target.hook_id, target.events, target.dead_letter_after_s)
        if moved:
            log.error(
                "webhook events moved to dead letters after failing too long; replay them with "
                f"`amflow-edge outbox replay --target {target.hook_id} --dead-letters`",
                hook_id=target.hook_id,
                count=moved,
            )
            self._on_change()

    def _post(self, event: PendingEvent) -> None:
        body = for_hook(event.payload, self.target.hook_id, self.target.hook_target)
        now = datetime.now(UTC)
        headers = {
            "webhook-id": event.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "X-AMFlow-Event": event.event,
            "X-AMFlow-Station": self._station_id,
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(event.event_id, now, body)
        deadline = time.monotonic() + self.target.timeout_s
        try:
            with self._client.stream("POST", self.target.url, content=body, headers=headers) as response:
                answer = b""
                # httpx's timeout bounds each read, not the whole answer: a receiver trickling its body is cut off.
                for chunk in response.iter_bytes():
                    answer += chunk[: _ANSWER_BYTES - len(answer)]
                    if time.monotonic() > deadline:
                        raise RetryLaterError(f"the answer took longer than {self.target.timeout_s:g} s")
                    if len(answer) >= _ANSWER_BYTES:
                        break
        except httpx.TimeoutException:
            raise RetryLaterError(f"no answer within {self.target.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise RetryLaterError(f"cannot reach {self.target.display_url}: {exc or type(exc).__name__}") from None
        except (RetryLaterError, RefusedError):
            raise
        except Exception as exc:  # noqa: BLE001 - anything else must count as a failure, not block the target
            raise RetryLaterError(f"could not post: {exc or type(exc).__name__}") from None
        judge(response, answer.decode("utf-8", errors="replace"))


class WebhookSenders:
    """Every configured target's sender, started and stopped with the station."""

    def __init__(
        self,
        targets: Sequence[WebhookTarget],
        db: StationDb,
        station_id: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._ledger = WebhookLedger(db)
        self._ledger.register(targets)
        self.senders = [WebhookSender(t, db, station_id, on_change) for t in targets]

    def wake(self) -> None:
        for sender in self.senders:
            sender.wake()

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def stop(self) -> None:
        for sender in self.senders:
            sender.stop()

    def statuses(self) -> list[WebhookStatus]:
        found = (self._ledger.status(s.target.hook_id, s.target.events) for s in self.senders)
        return [status for status in found if status is not None]
