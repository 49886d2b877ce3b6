"""Headless Chromium driven over the DevTools protocol, on a pipe: no extra library, no port.

`--remote-debugging-pipe` makes Chromium read protocol commands from file descriptor 3 and
write its answers and events to descriptor 4, each message JSON ended by a NUL byte (the
transport Playwright uses). `Browser` starts one in its own process group, with its own
profile, and stops it when the block ends; every wait has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

WINDOW = (1200, 900)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking", "--disable-sync",
    "--hide-scrollbars", "--mute-audio", f"--window-size={WINDOW[0]},{WINDOW[1]}",
)  # fmt: skip


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, executable: str, workdir: Path, timeout: float = 60.0):
        self.executable, self.workdir, self.timeout = executable, workdir, timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._next_id = 0

    def __enter__(self) -> Browser:
        commands_read, self._commands = os.pipe()  # we write, Chromium reads on its fd 3
        self._answers, answers_write = os.pipe()  # Chromium writes on its fd 4, we read
        profile = self.workdir / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "chromium.log"
        with self.log.open("wb") as log:
            # bash puts the two pipe ends on descriptors 3 and 4 and becomes Chromium.
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{commands_read} 4>&{answers_write}', "chromium", self.executable,
                 *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                pass_fds=(commands_read, answers_write), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        os.close(commands_read)
        os.close(answers_write)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close")
                self.process.wait(timeout=self.timeout)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever is left of the group this browser started
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=self.timeout)
            for fd in (self._commands, self._answers):
                os.close(fd)

    # --- the protocol -----------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event `method` (already received or still to come)."""
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._answers], [], [], max(0.0, remaining))
            if not ready:
                raise BrowserError(f"no answer from Chromium in {self.timeout:.0f} s; its log: {self._log_tail()}")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe; its log: {self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    # --- a page -------------------------------------------------------------------------------

    def open(self, url: str) -> str:
        """A new tab showing `url`, loaded (its load event fired); returns the tab's session."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}, session)  # fmt: skip
        self.events.clear()  # what about:blank did is not the page's
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page (the test's, not the page's own script)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str) -> bytes:
        """A PNG of the whole page, as tall as its content."""
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip},
                         session)  # fmt: skip
        return base64.b64decode(shot["data"])

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and log entries of level error or warning."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"{details.get('text')}: {details.get('exception', {}).get('description')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        return found

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
