"""Open a local HTML file in headless Chromium and report what a reader would see.

Talks the DevTools protocol over `--remote-debugging-pipe` (fd 3: commands to
the browser, fd 4: replies and events, JSON messages ended by NUL), so no
port is opened and nothing beyond Debian's `chromium` package is needed.
`load(path)` returns the console messages and exceptions the page produced,
the values of JavaScript expressions evaluated after the load event, and a
PNG screenshot of the whole page.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-breakpad", "--disable-dev-shm-usage",
         "--remote-debugging-pipe")


def executable() -> str | None:
    """The Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    """Chromium could not be driven (did not start, closed the pipe, answered with an error)."""


@dataclass
class Page:
    """What loading a page produced."""

    console: list[str] = field(default_factory=list)   # "LEVEL: text" of console calls, log entries, exceptions
    values: dict = field(default_factory=dict)          # expression -> its value after load (promises awaited)
    screenshot: bytes = b""                             # PNG of the full page
    height: int = 0                                     # of the full page, CSS pixels
    clips: list = field(default_factory=list)           # PNG per requested (top, height) band


class _Pipe:
    def __init__(self, proc, to_browser: int, from_browser: int, deadline: float):
        self.proc, self.wfd, self.rfd, self.deadline = proc, to_browser, from_browser, deadline
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self.rfd], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"chromium exited with status {self.proc.returncode}")
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message()
            if ev.get("method") == method:
                return ev
            if "method" in ev:
                self.events.append(ev)


def _console_lines(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev["method"] == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"{p.get('type')}: {text}")
        elif ev["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}".strip())
        elif ev["method"] == "Log.entryAdded":
            e = p.get("entry", {})
            out.append(f"{e.get('level')}: {e.get('text')} ({e.get('url', '')})")
    return out


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved above fd 9, so that putting them on fds 3 and 4 cannot clobber one."""
    out = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return out


def load(path: str, expressions: tuple[str, ...] = (), width: int = 1400, timeout: float = 180.0,
         clips: tuple[tuple[int, int], ...] = ()) -> Page:
    """Load file `path`, evaluate `expressions` after the load event, take a full-page screenshot
    (and one of each (top, height) band in `clips`, for a closer look)."""
    exe = executable()
    if exe is None:
        raise BrowserError("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="zdtm-chromium-")
    to_r, to_w = _high(os.pipe())      # commands: we write to_w, chromium reads fd 3
    from_r, from_w = _high(os.pipe())  # replies: chromium writes fd 4, we read from_r

    # The shell puts the pipe ends on the fds Chromium expects (3 and 4) and closes the originals.
    argv = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"]
    proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-', "bash", *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(to_r, from_w))
    os.close(to_r)
    os.close(from_w)
    pipe = _Pipe(proc, to_w, from_r, time.monotonic() + timeout)
    try:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session)
        pipe.events.clear()  # about:blank's own noise, if any
        pipe.call("Page.navigate", session, url="file://" + os.path.abspath(path))
        pipe.wait_event("Page.loadEventFired")
        page = Page()
        for expr in expressions:
            res = pipe.call("Runtime.evaluate", session, expression=expr, returnByValue=True, awaitPromise=True)
            page.values[expr] = res.get("result", {}).get("value")
        shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        page.screenshot = base64.b64decode(shot["data"])
        page.height = pipe.call("Runtime.evaluate", session, expression="document.documentElement.scrollHeight",
                                returnByValue=True).get("result", {}).get("value") or 0
        for top, height in clips:
            band = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": top, "width": width, "height": height, "scale": 1})
            page.clips.append(base64.b64decode(band["data"]))
        page.console = _console_lines(pipe.events)
        try:
            pipe.call("Browser.close")
        except BrowserError:
            pass  # it may close the pipe before answering
        return page
    finally:
        os.close(to_w)
        os.close(from_r)
        if proc.poll() is None:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
