"""The one alert sink: structured journal entries, each kind with its own
MESSAGE_ID (see systemd/vfiomond.catalog), priority and rate limit.

Without systemd-python or a journal, entries go to stderr as one line each.
"""

import logging
import sys
import threading
import time
from typing import Callable, Dict, NamedTuple, Optional, Tuple

log = logging.getLogger("vfiomond")

LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE = 2, 3, 4, 5


class AlertKind(NamedTuple):
    name: str
    message_id: str  # 128-bit, lower-case hex, never reused
    priority: int  # syslog priority
    per_minute: int  # entries allowed per minute; the rest are counted, not sent


PIN_MISMATCH = AlertKind("pin_mismatch", "3f1c2a9e7b5d4c0e8a6f1b2d3c4e5f60", LOG_CRIT, 10)
MEMLOCK_REFUSED = AlertKind("memlock_refused", "8b0e5d4c2a1f4e3d9c7b6a5f4e3d2c1b", LOG_ERR, 10)
KERNEL_SPLAT = AlertKind("kernel_splat", "c4d2e8f1a9b7460e8d3c5b2a1f0e9d8c", LOG_ERR, 10)
KERNEL_ADVISORY = AlertKind("kernel_advisory", "5e7a9c1b3d2f4a6e8c0b1d3f5a7c9e2b", LOG_WARNING, 20)
ZERO_PAGE_PIN = AlertKind("zero_page_pin", "0179e5ffcd3b48f6a3e76e619fe9d7c7", LOG_WARNING, 10)
PROBE_LOST = AlertKind("probe_lost", "286ab4a7fb4b451bbf7ab26f61586336", LOG_WARNING, 20)
DEVICE_GONE_IN_USE = AlertKind("device_gone_in_use", "e596ff4670cd4258a1a919415499d840", LOG_ERR, 10)
DEVICE_RESET_FAILED = AlertKind("device_reset_failed", "b68e24175ac84c8e9df8c67d1e1d5441", LOG_ERR, 10)

KINDS = (PIN_MISMATCH, ZERO_PAGE_PIN, MEMLOCK_REFUSED, KERNEL_SPLAT, KERNEL_ADVISORY, PROBE_LOST, DEVICE_GONE_IN_USE,
         DEVICE_RESET_FAILED)


def _journal_sender() -> Optional[Callable]:
    try:
        from systemd import journal
    except ImportError:
        return None
    return journal.send


class AlertSink:
    """Alerts from every thread (the main loop, the kernel-log watcher, pin
    verification) and counts read by the HTTP threads: one lock guards both."""

    def __init__(self, send: Optional[Callable] = None, clock: Callable[[], float] = time.monotonic):
        self._send = send if send is not None else _journal_sender()
        self._clock = clock
        self._tokens: Dict[str, float] = {}
        self._last: Dict[str, float] = {}
        self.sent: Dict[str, int] = {k.name: 0 for k in KINDS}
        self.suppressed: Dict[str, int] = {k.name: 0 for k in KINDS}
        self.unsent: Dict[str, int] = {k.name: 0 for k in KINDS}  # the journal refused them: on stderr
        self.journal_failing = False
        self._lock = threading.Lock()

    def counts(self) -> Dict[str, Tuple[int, int, int]]:
        """kind -> (sent, suppressed, of the sent ones written to stderr: the journal refused them)."""
        with self._lock:
            return {k: (self.sent[k], self.suppressed[k], self.unsent[k]) for k in self.sent}

    def _allow(self, kind: AlertKind) -> bool:
        now = self._clock()
        tokens = self._tokens.get(kind.name, float(kind.per_minute))
        tokens = min(float(kind.per_minute), tokens + (now - self._last.get(kind.name, now)) * kind.per_minute / 60.0)
        self._last[kind.name] = now
        if tokens < 1.0:
            self._tokens[kind.name] = tokens
            return False
        self._tokens[kind.name] = tokens - 1.0
        return True

    def alert(self, kind: AlertKind, message: str, **fields) -> bool:
        """Send one entry; upper-case ``fields`` become journal fields. False if rate-limited."""
        with self._lock:
            if not self._allow(kind):
                self.suppressed[kind.name] += 1
                return False
            send = self._send
        entry = {k: str(v) for k, v in fields.items()}
        journaled = send is not None and self._to_journal(send, kind, message, entry)
        # Counted once the send is done, both counters at once: a scrape never sees an
        # alert whose refusal by the journal is still to be counted.
        with self._lock:
            self.sent[kind.name] += 1
            if send is not None and not journaled:
                self.unsent[kind.name] += 1
        if not journaled:
            details = " ".join("%s=%s" % kv for kv in sorted(entry.items()))
            print("vfiomond alert %s: %s %s" % (kind.name, message, details), file=sys.stderr, flush=True)
        return True

    def _to_journal(self, send: Callable, kind: AlertKind, message: str, entry: Dict[str, str]) -> bool:
        """Send one entry to the journal; False (logged once per outage) when it refuses."""
        try:
            send(message, MESSAGE_ID=kind.message_id, PRIORITY=str(kind.priority),
                 SYSLOG_IDENTIFIER="vfiomond", VFIOMOND_ALERT=kind.name, **entry)
        except OSError as e:  # no journal socket (journald stopped or restarting): try again next time
            if not self.journal_failing:
                self.journal_failing = True
                log.warning("journal unavailable (%s); alerts go to stderr until it is back", e)
            return False
        if self.journal_failing:
            self.journal_failing = False
            log.info("journal available again; alerts go to the journal")
        return True
