"""The HTML report in a real browser: headless Chromium (Debian's `chromium`,
installed by scripts/setup test) loads a report of a recording with hostile
process names, driven over the DevTools protocol by the small client below
(stdlib only: a websocket over a socket). The page must render with no
console message, exception or failed load, open no dialog (an escaped
`<script>alert(1)</script>` must stay text), and its screenshot must not be
blank.

The DevTools protocol rather than `--screenshot` + `--enable-logging`: the
log's format changes between Chromium versions, while CDP's events for
exceptions, console calls, log entries and dialogs are a stable API, and
the same session takes the full-page screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import zlib

import pytest

from rseqtop.commands import record as record_cmd
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.recording import format as fmt
from support import get, wait_for

HOSTILE = "<script>alert(1)</script>"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--window-size=1000,900", "about:blank"]

pytestmark = pytest.mark.slow


class WebSocket:
    """A minimal websocket client (RFC 6455): text frames, masked as a client must."""

    def __init__(self, url: str, timeout: float = 30):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv_some()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.split(b"\r\n")[0].split()[1] == b"101", head

    def _recv_some(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the browser closed the connection")
        return data

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv_some()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)  # a server does not mask
            op = b0 & 0x0F
            if op == 8:
                raise ConnectionError("the browser closed the websocket")
            if op in (0, 1, 2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Calls and events of one page target."""

    def __init__(self, ws_url: str):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")


def png_pixels(data: bytes) -> tuple:
    """(width, height, [RGB(A) rows as bytes]) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, ihdr
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i] for i in range(len(r)) if i % bpp < 3) for r in rows]


def non_white(rows: list) -> int:
    """Pixels that are not (near) white."""
    return sum(1 for r in rows for i in range(0, len(r), 3) if min(r[i], r[i + 1], r[i + 2]) < 235)


def tiny_png(width: int, height: int, raw: bytes) -> bytes:
    """An RGB PNG from filtered scanlines (a filter byte, then the row)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_png_reader_counts_pixels():
    """The decoder above on 2x2 PNGs made by hand, with the None, Sub and Up filters."""
    white, black = bytes([255] * 3), bytes(3)
    # Sub: the second pixel is the first plus 0 (white); Up: the row above plus 0
    _, _, rows = png_pixels(tiny_png(2, 2, b"\x01" + white + black + b"\x02" + black + black))
    assert rows == [white * 2, white * 2] and non_white(rows) == 0
    # None: as written (one black pixel); Up repeats the row above
    w, h, rows = png_pixels(tiny_png(2, 2, b"\x00" + white + black + b"\x02" + black + black))
    assert (w, h) == (2, 2) and rows == [white + black] * 2 and non_white(rows) == 2


@pytest.fixture
def browser():
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/setup test installs it)")
    profile = tempfile.mkdtemp(prefix="rseqtop-chromium-")
    proc = subprocess.Popen([binary, f"--user-data-dir={profile}", *CHROMIUM_FLAGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "chromium exited before listening"
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        assert port, "chromium did not say where DevTools listens"
        targets = wait_for(lambda: [t for t in json.loads(get(f"http://127.0.0.1:{port}/json/list")[1])
                                    if t["type"] == "page"], 30, "a page target")
        tools = DevTools(targets[0]["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_chromium_without_errors(browser, tmp_path, rseqtop_cmd):
    rec = tmp_path / "rec.jsonl"
    src = SyntheticSource(processes=6, threads_per_process=2, comms=[HOSTILE, "envoy", 'a"b\'&c\x1b[31m'])
    with open(rec, "w") as out:
        record_cmd.record(src, out, 0.001, 12, fmt.header(1.0, "all processes"))
    res = subprocess.run(rseqtop_cmd + ["report", str(rec), "-o", str(tmp_path / "report.html")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr

    for domain in ("Page", "Runtime", "Log"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=(tmp_path / "report.html").as_uri())
    browser.wait_event("Page.loadEventFired")
    time.sleep(0.5)  # late console messages
    assert browser.evaluate("document.readyState") == "complete"

    problems = [e for e in browser.events if e.get("method") in (
        "Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded", "Page.javascriptDialogOpening")]
    assert problems == [], problems
    assert browser.evaluate("document.scripts.length") == 0
    assert HOSTILE in browser.evaluate("document.body.innerText")  # shown as text, not run
    drawn = browser.evaluate("[...document.querySelectorAll('svg')].filter(s => s.getBoundingClientRect().width"
                             " > 100 && s.querySelectorAll('rect,polyline').length > 0).length")
    assert drawn >= 4  # two rate charts, the causes, an offset histogram at least

    size = browser.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 3000),
                              "scale": 0.5})  # half size: the pure-Python PNG decode stays quick
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    width, height, rows = png_pixels(png)
    inked = non_white(rows)
    print(f"screenshot {tmp_path / 'report.png'}: {width}x{height}, {100 * inked / (width * height):.1f}% not white")
    assert height > 750  # the page beyond its first screen (900 px), at half size
    assert inked > 0.03 * width * height  # text, lines and bars: not blank
