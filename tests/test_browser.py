"""The HTML report is a web page: headless Chromium opens it, every image loads, nothing is logged as an
error, the answer tables fit the window, and a full-page screenshot is saved.

Chromium is driven over the Chrome DevTools protocol with a small standard-library WebSocket client (no
extra Python package). Without a browser (Debian's `chromium`; `.ci/run` installs it) the test skips.

    COMPBENCH_BROWSER_RUN=results/<run>   check that run's report instead of the hand-made one
    COMPBENCH_SCREENSHOT_DIR=<dir>        where report.png goes (default: the test's tmp_path)
    COMPBENCH_CHROMIUM=<path>             the browser binary (default: chromium, chromium-browser, google-chrome)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bench.report import write_report
from tests.test_report import MANIFEST, chain_rows, classification_rows, kd_rows, lm_rows, make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1400, 900)  # CSS pixels: a laptop-sized window; the answer tables must fit it
MAX_SHOT_HEIGHT = 16000  # Chromium's largest capture
# Generous: on a loaded 2-core CI machine (the other test worker busy) Chromium once took over 30 s to start.
START_S, LOAD_S = 180.0, 60.0

pytestmark = pytest.mark.browser


def find_browser() -> str | None:
    named = os.environ.get("COMPBENCH_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((found for found in map(shutil.which, BROWSERS) if found), None)


class DevTools:
    """A minimal Chrome DevTools protocol client over one WebSocket (RFC 6455, text frames, client-masked)."""

    def __init__(self, url: str, timeout: float = LOAD_S):
        host_port, path = url.removeprefix("ws://").split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            reply += chunk
        if b" 101 " not in reply.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {reply[:200]!r}")
        self.buffer = reply.split(b"\r\n\r\n", 1)[1]
        self.events: list[dict] = []
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in `events`."""
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            message = self._receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = LOAD_S) -> dict:
        """Return the first `event` (kept or arriving within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((e for e in self.events if e.get("method") == event), None)
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout:g} s")
            self.events.append(self._receive())

    def close(self) -> None:
        self.sock.close()

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", size)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", size)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _receive(self) -> dict:
        parts = []
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(size)  # the server never masks
            opcode = first & 0x0F
            if opcode == 0x9:  # ping
                self._send(payload, opcode=0xA)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            parts.append(payload)
            if first & 0x80:
                return json.loads(b"".join(parts))


def start_browser(binary: str, profile: Path) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium on an about:blank page; return the process and the page's DevTools URL."""
    # stderr goes to a file, not a pipe: a pipe nobody reads fills up and blocks a chatty browser.
    # --disable-dev-shm-usage: Debian's launcher adds it only when its /dev/shm check works, and it does not
    # where findmnt lists /dev/shm twice (a container).
    log = profile / "compbench-stderr.log"  # Chromium ignores unknown files in its profile folder
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    started = time.monotonic()
    while not (port_file.is_file() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() - started > START_S:
            stop_browser(process)
            tail = log.read_text(errors="replace")[-1500:]
            pytest.fail(f"{binary} did not start its DevTools endpoint (exit code {process.returncode}, "
                        f"{time.monotonic() - started:.0f} s, limit {START_S:g} s):\n{tail}")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
        pages = [t for t in json.load(reply) if t.get("type") == "page"]
    return process, pages[0]["webSocketDebuggerUrl"]


def stop_browser(process: subprocess.Popen) -> None:
    """End the browser and the helper processes it started (its own process group, nothing else)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def open_page(binary: str, page: Path, screenshot: Path) -> dict:
    """Load `page`, collect console errors and image states, measure the tables, save a full-page screenshot."""
    with tempfile.TemporaryDirectory(prefix="compbench-chromium-") as profile:
        process, url = start_browser(binary, Path(profile))
        tools = DevTools(url)
        try:
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            tools.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                       deviceScaleFactor=1, mobile=False)
            tools.call("Page.navigate", url=page.resolve().as_uri())
            tools.wait_for("Page.loadEventFired")
            state = json.loads(tools.call("Runtime.evaluate", expression=PAGE_STATE, returnByValue=True)
                               ["result"]["value"])
            width, height = state["width"], min(state["height"], MAX_SHOT_HEIGHT)
            tools.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=height, deviceScaleFactor=1,
                       mobile=False)
            shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": max(width, WINDOW[0]), "height": height, "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            tools.call("Runtime.evaluate", expression="1")  # let late events arrive before they are read
        finally:
            tools.close()
            stop_browser(process)
    state["errors"] = console_errors(tools.events)
    return state


# What the page looks like inside the browser, as JSON: images, tables that scroll, plots per task.
PAGE_STATE = """JSON.stringify({
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  images: Array.from(document.images).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                                 width: i.naturalWidth})),
  answers: Array.from(document.querySelectorAll('table.answer')).map(t => ({scroll: t.scrollWidth,
                                                                           visible: t.clientWidth})),
  sections: Array.from(document.querySelectorAll('h2')).map(h => {
    let images = 0, answers = 0, node = h.nextElementSibling;
    while (node && node.tagName !== 'H2') {
      images += node.tagName === 'IMG' ? 1 : node.querySelectorAll('img').length;
      answers += node.matches('table.answer') ? 1 : 0;
      node = node.nextElementSibling;
    }
    return {title: h.textContent, images: images, answers: answers};
  }),
})"""


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads the browser reported."""
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + params.get("exceptionDetails", {}).get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(f"log: {params['entry'].get('text', '')} {params['entry'].get('url', '')}")
    return out


def everything_run(tmp_path: Path) -> Path:
    """One run with every kind of section: classification and LM tasks, an absent device, KD, a chain."""
    rows = classification_rows() + lm_rows()
    for task, extra in (("digits-kd", kd_rows()), ("bbc-chain", chain_rows())):
        for row in extra:
            row.task, row.cell_id = task, f"{task}-{row.cell_id}"
            row.details = row.details.replace('"stud"', f'"{task}-stud"') if row.details else None
            rows.append(row)
    return make_run(tmp_path, "browser", rows, {**MANIFEST, "run_id": "browser"})


def test_report_opens_in_a_browser(tmp_path):
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set COMPBENCH_CHROMIUM)")
    given = os.environ.get("COMPBENCH_BROWSER_RUN")
    run_dir = Path(given) if given else everything_run(tmp_path)
    (page,) = write_report(run_dir, tmp_path / "report", ("html",))
    shots = Path(os.environ.get("COMPBENCH_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "report.png"

    state = open_page(binary, page, screenshot)
    print(f"screenshot: {screenshot}")  # shown with -s / -rA

    assert state["errors"] == []
    assert state["images"] and all(image["loaded"] and image["width"] > 300 for image in state["images"]), \
        [image["alt"] for image in state["images"] if not image["loaded"]]
    assert state["answers"] and all(t["scroll"] <= t["visible"] + 1 for t in state["answers"]), state["answers"]
    measured = [s for s in state["sections"] if s["answers"]]  # a task measured on no device has no answer
    assert measured and all(s["images"] >= 2 for s in measured), state["sections"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", screenshot.read_bytes()[16:24])
    assert width >= WINDOW[0] and height >= min(state["height"], MAX_SHOT_HEIGHT) > WINDOW[1]
