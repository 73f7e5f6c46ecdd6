"""A browser view for headless boards: an MJPEG stream and live stats on localhost.

::

    with WebView(port=8080) as view:          # http://127.0.0.1:8080/
        for frame in frames:
            view.publish(frame)               # never blocks
            view.set_stats({"fps": 29.7})

Routes: ``/`` (the page), ``/stream.mjpg`` (multipart MJPEG), ``/frame.jpg``
(the newest frame), ``/stats.json`` (the newest stats).

Each client is served on its own thread and always gets the newest frame: a
slow client skips frames instead of queueing them, and never holds a lock
while it writes, so it cannot stall the capture loop or the other clients.
A client whose socket accepts nothing for ``send_timeout`` seconds is dropped.
At most ``max_clients`` streams are served at once (others get HTTP 503).
Frames are JPEG-encoded lazily, once per frame, and only when someone watches.
OpenCV (the JPEG encoder) is imported inside the function that encodes.
"""

from __future__ import annotations

import html
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ...errors import WebViewError
from ...preprocess import opencv

__all__ = ["WebView", "WebViewError"]

BOUNDARY = "edgeshipframe"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ margin:0; background:#111; color:#ddd; font:14px/1.4 system-ui, sans-serif;
        display:grid; grid-template-columns:minmax(0, 1fr) 300px; }}
 @media (max-width: 700px) {{ body {{ grid-template-columns:1fr; }} }}
 #view {{ padding:8px; min-width:0; }}
 #view img {{ max-width:100%; background:#000; display:block; min-height:120px; }}
 #side {{ padding:8px 12px; }}
 h1 {{ font-size:16px; margin:4px 0 8px; color:#fff; }}
 table {{ border-collapse:collapse; width:100%; table-layout:fixed; font-variant-numeric:tabular-nums; }}
 td {{ padding:2px 4px; border-bottom:1px solid #333; white-space:nowrap; }}
 td.v {{ text-align:right; color:#7fdc7f; overflow:hidden; text-overflow:ellipsis; }}
 #side {{ overflow:hidden; }}
 #fps {{ font-size:28px; color:#7fdc7f; }}
</style></head>
<body>
<div id="view"><img id="frame" src="/frame.jpg" alt="stream"></div>
<div id="side"><h1>{title}</h1><div><span id="fps">{fps}</span> FPS</div>
<table id="stats">{rows}</table><p id="status" style="color:#888">{status}</p></div>
<script>
const img = document.getElementById('frame');
window.addEventListener('load', () => {{ img.src = '/stream.mjpg'; }});
img.addEventListener('error', () => {{ setTimeout(() => {{ img.src = '/stream.mjpg?' + Date.now(); }}, 1000); }});
function fmt(v) {{ if (typeof v === 'number') return Number.isInteger(v) ? v : v.toFixed(2); v = String(v); return v.length > 34 ? '\u2026' + v.slice(-33) : v; }}
function rows(s) {{
  const out = [];
  for (const [k, v] of Object.entries(s)) {{
    if (v && typeof v === 'object' && !Array.isArray(v)) {{
      for (const [k2, v2] of Object.entries(v)) out.push([k2 + (k.endsWith('_ms') ? ' ms' : ''), fmt(v2)]);
    }} else if (!Array.isArray(v)) out.push([k, fmt(v)]);
  }}
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({{'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}}[c]));
  return out.map(([k, v]) => '<tr><td>' + esc(k) + '</td><td class="v" title="' + esc(v) + '">' + esc(v) + '</td></tr>').join('');
}}
async function poll() {{
  try {{
    const r = await fetch('/stats.json', {{cache: 'no-store'}});
    const s = await r.json();
    document.getElementById('fps').textContent = fmt(s.fps ?? 0);
    document.getElementById('stats').innerHTML = rows(s);
    document.getElementById('status').textContent = 'live';
  }} catch (e) {{ document.getElementById('status').textContent = 'disconnected'; }}
  setTimeout(poll, 500);
}}
poll();
</script></body></html>
"""


def _rows(stats: dict) -> str:
    out = []
    for k, v in stats.items():
        if isinstance(v, dict):
            out += [(f"{k2} ms" if k.endswith("_ms") else k2, v2) for k2, v2 in v.items()]
        elif not isinstance(v, (list, tuple)):
            out.append((k, v))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "".join(f'<tr><td>{html.escape(str(k))}</td><td class="v">{html.escape(fmt(v))}</td></tr>' for k, v in out)


class _Hub:
    """The newest frame (raw and, lazily, as JPEG) and stats, shared by all clients."""

    def __init__(self, quality: int) -> None:
        self.cond = threading.Condition()
        self.seq = 0
        self.frame: np.ndarray | None = None
        self.stats: dict = {}
        self.closed = False
        self.quality = int(quality)
        self._jpeg_lock = threading.Lock()
        self._jpeg_seq = -1
        self._jpeg = b""

    def publish(self, frame: np.ndarray) -> None:
        with self.cond:
            self.frame = frame
            self.seq += 1
            self.cond.notify_all()

    def wait_newer(self, seq: int, timeout: float) -> int:
        """Wait until a frame newer than ``seq`` exists; returns the newest sequence number."""
        with self.cond:
            if self.seq <= seq and not self.closed:
                self.cond.wait(timeout)
            return self.seq

    def jpeg(self) -> tuple[int, bytes]:
        """The newest frame as JPEG (encoded at most once per frame)."""
        with self.cond:
            seq, frame = self.seq, self.frame
        if frame is None:
            return 0, b""
        with self._jpeg_lock:
            if self._jpeg_seq != seq:
                cv2 = opencv()
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if ok:
                    self._jpeg, self._jpeg_seq = buf.tobytes(), seq
            return self._jpeg_seq, self._jpeg


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    view: "WebView"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):  # quiet: the stream reports clients itself
        pass

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        view = self.server.view
        self.connection.settimeout(view.send_timeout)
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                stats = view.stats()
                page = _PAGE.format(title=html.escape(view.title), fps=html.escape(f"{stats.get('fps', 0):.1f}"
                                    if isinstance(stats.get("fps"), (int, float)) else "-"),
                                    rows=_rows(stats), status="starting")
                self._send(200, "text/html; charset=utf-8", page.encode())
            elif path == "/stats.json":
                body = json.dumps(view.stats(), default=str, allow_nan=False).encode()
                self._send(200, "application/json", body)
            elif path == "/frame.jpg":
                view._hub.wait_newer(0, 2.0)
                _, jpg = view._hub.jpeg()
                if not jpg:
                    self._send(503, "text/plain", b"no frame yet\n")
                else:
                    self._send(200, "image/jpeg", jpg)
            elif path == "/stream.mjpg":
                self._stream(view)
            else:
                self._send(404, "text/plain", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError, OSError):
            pass  # the client went away or stalled; its thread ends, nobody else notices

    def _stream(self, view: "WebView") -> None:
        if not view._slots.acquire(blocking=False):
            self._send(503, "text/plain", f"too many viewers (at most {view.max_clients})\n".encode())
            return
        try:
            with view._count_lock:
                view._clients += 1
                view.total_clients += 1
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            seq = 0
            while not view._hub.closed:
                newest = view._hub.wait_newer(seq, 1.0)
                if newest <= seq:
                    continue
                seq, jpg = view._hub.jpeg()
                if not jpg:
                    continue
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n".encode()
                    + jpg + b"\r\n"
                )
                self.wfile.flush()
        finally:
            with view._count_lock:
                view._clients -= 1
            view._slots.release()


class WebView:
    """Serve frames as MJPEG with a stats page.

    Args:
        host: address to listen on; ``127.0.0.1`` (default) keeps it local.
        port: TCP port; 0 picks a free one (see :attr:`url`).
        max_clients: streams served at once.
        quality: JPEG quality 1..100.
        send_timeout: seconds a client may block a write before it is dropped.

    Raises (from :meth:`start`):
        WebViewError: the address is in use or not available.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, max_clients: int = 4, quality: int = 80,
                 send_timeout: float = 5.0, title: str = "edgeship stream") -> None:
        if max_clients < 1:
            raise WebViewError(f"max_clients must be >= 1, got {max_clients}")
        self.host, self.port = host, int(port)
        self.max_clients = int(max_clients)
        self.send_timeout = float(send_timeout)
        self.title = title
        self.total_clients = 0
        self._hub = _Hub(quality)
        self._slots = threading.BoundedSemaphore(self.max_clients)
        self._count_lock = threading.Lock()
        self._clients = 0
        self._stats: dict = {}
        self._stats_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def clients(self) -> int:
        """Streams being served now."""
        return self._clients

    def start(self) -> "WebView":
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise WebViewError(
                f"cannot serve the web view on {self.host}:{self.port}: {exc.strerror or exc}; pass another --port"
            ) from None
        server.view = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="edgeship-webview", daemon=True)
        self._thread.start()
        return self

    def publish(self, frame: np.ndarray) -> None:
        """Make ``frame`` (BGR uint8) the newest frame. Never blocks on clients."""
        self._hub.publish(frame)

    def set_stats(self, stats: dict) -> None:
        with self._stats_lock:
            self._stats = dict(stats)

    def stats(self) -> dict:
        with self._stats_lock:
            s = dict(self._stats)
        s["viewers"] = self._clients
        return s

    def close(self) -> None:
        """Stop serving (idempotent); open streams end within a second."""
        with self._hub.cond:
            self._hub.closed = True
            self._hub.cond.notify_all()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def __enter__(self) -> "WebView":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_viewer(view: WebView, timeout: float) -> bool:
    """Wait until at least one client streams (for demos that should not start unseen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if view.clients:
            return True
        time.sleep(0.05)
    return False
