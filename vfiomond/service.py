"""The systemd service protocol (sd_notify(3) through systemd-python's
``systemd.daemon.notify``): STATUS at each start-up stage, READY=1, RELOADING=1
with MONOTONIC_USEC, STOPPING=1, and WATCHDOG=1 only while the main loop makes
progress.  Outside a Type=notify unit (no NOTIFY_SOCKET) every call does nothing.
"""

import logging
import os
import time
from typing import Callable, Mapping, Optional

log = logging.getLogger("vfiomond")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it (systemd >= 253)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec= (WATCHDOG_USEC), or
    None when the watchdog is off or meant for another process (WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    # A uint64 of ASCII digits: "²".isdigit() holds, and int() of it (or of 4300+
    # digits) is a ValueError.
    if not (usec.isascii() and usec.isdigit()) or len(usec) > 20 or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 1e6 / 2


def _library_sender(environ: Mapping[str, str]) -> Optional[Callable[[str], object]]:
    if not environ.get("NOTIFY_SOCKET"):
        return None
    try:
        from systemd import daemon
    except ImportError:
        log.warning("NOTIFY_SOCKET is set but systemd-python (python3-systemd) is missing: systemd is not told "
                    "when vfiomond is ready")
        return None
    return daemon.notify


class Notifier:
    """What systemd is told.  ``send`` takes the newline-separated assignments."""

    def __init__(self, send: Optional[Callable[[str], object]] = None, environ: Mapping[str, str] = os.environ,
                 clock: Callable[[], float] = time.monotonic):
        self._send = send if send is not None else _library_sender(environ)
        self._clock = clock
        self.watchdog = watchdog_interval(environ, os.getpid()) if self._send is not None else None
        self._last_ping: Optional[float] = None
        self.pings = 0

    def _notify(self, *assignments: str) -> None:
        if self._send is not None:
            self._send("\n".join(assignments))

    def status(self, text: str) -> None:
        log.debug("status: %s", text)
        self._notify("STATUS=" + text)

    def ready(self, status: str) -> None:
        self._notify("READY=1", "STATUS=" + status)

    def reloading(self) -> None:
        self._notify("RELOADING=1", "MONOTONIC_USEC=%d" % monotonic_usec(), "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self._notify("STOPPING=1", "STATUS=stopping")

    def progress(self, healthy: bool = True) -> bool:
        """The main loop went round once.  Pings the watchdog (at most every half
        WatchdogSec) if ``healthy``: a stuck loop or a dead HTTP thread stops the
        pings, and systemd restarts the service.  True if a ping was sent."""
        if self.watchdog is None or not healthy:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog:
            return False
        self._last_ping = now
        self.pings += 1
        self._notify("WATCHDOG=1")
        return True
