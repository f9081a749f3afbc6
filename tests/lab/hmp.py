"""The guest asks, the lab's QEMU does: errors injected into the guest's PCIe devices.

A scenario writes ``hmp-request.N`` (one monitor command) into the shared out folder;
this thread runs it on QEMU's human monitor (a unix socket) and writes the monitor's
answer to ``hmp-reply.N``.  Only ``pcie_aer_inject_error`` is accepted: a scenario
cannot stop or reconfigure the machine it runs on.
"""

import os
import re
import socket
import threading
import time

ALLOWED = re.compile(r"^pcie_aer_inject_error( -[ac])* [\w-]+ \w+$")
PROMPT = b"(qemu) "


class HmpBridge(threading.Thread):
    def __init__(self, socket_path: str, out: str):
        super().__init__(name="hmp-bridge", daemon=True)
        self.socket_path = socket_path
        self.out = out
        self._stop = threading.Event()
        self._sock = None

    def stop(self) -> None:
        self._stop.set()

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.socket_path)
        self._sock = s
        self._until_prompt()

    def _until_prompt(self) -> bytes:
        data = b""
        while not data.endswith(PROMPT):
            chunk = self._sock.recv(4096)
            if not chunk:
                raise OSError("the monitor closed")
            data += chunk
        return data

    def command(self, line: str) -> str:
        if self._sock is None:
            self._connect()
        self._sock.sendall(line.encode() + b"\n")
        answer = self._until_prompt()[:-len(PROMPT)].decode(errors="replace")
        # The monitor echoes the command (with terminal escapes) up to "\r\n"; the answer follows.
        return answer.partition("\r\n")[2].strip()

    def _serve(self, name: str) -> None:
        path = os.path.join(self.out, name)
        reply = os.path.join(self.out, name.replace("request", "reply"))
        with open(path) as f:
            line = f.read().strip()
        try:
            answer = self.command(line) if ALLOWED.match(line) else "refused: only pcie_aer_inject_error"
        except OSError as e:
            answer = "error: %s" % e
        os.unlink(path)
        with open(reply + ".tmp", "w") as f:
            f.write(answer + "\n")
        os.rename(reply + ".tmp", reply)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                names = sorted(n for n in os.listdir(self.out) if n.startswith("hmp-request.")
                               and not n.endswith(".tmp"))
            except OSError:
                names = []
            for name in names:
                self._serve(name)
            time.sleep(0.2)
        if self._sock is not None:
            self._sock.close()
