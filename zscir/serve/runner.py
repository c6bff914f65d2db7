"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks).

    with serve_in_thread(app) as url:        # a free port on 127.0.0.1
        httpx.get(url + "/healthz")

The socket is bound here, before uvicorn starts, so port 0 gives a free port
whose number is known at once. uvicorn stops gracefully on SIGINT/SIGTERM:
it stops accepting, lets running requests finish (``graceful_timeout``
seconds at most), then runs the app's shutdown (index watcher, search workers).

The HTTP protocol is uvicorn's h11 one with two limits of :class:`zscir.serve.limits.Limits`
(read from ``app.state.limits``): a connection over ``max_connections`` is closed at once, and
a request whose line and headers have not all arrived ``header_timeout`` seconds after the
connection opened (or after the previous answer on it) is answered 408 and closed, however
slowly its bytes keep trickling in (uvicorn's keep-alive timer restarts on every byte).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import socket
import threading
import time
from typing import Callable, Iterator

import h11

from zscir.errors import ZscirError
from zscir.serve.limits import Limits


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when proto says TCP
    # (without it every response waited ~40 ms for a delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ZscirError(f"cannot listen on {host}:{port} (option --host/--port): {e.strerror or e}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_big_blocks_to_the_system(threshold: int = 1 << 20) -> None:
    """glibc: allocations over ``threshold`` bytes are always mmap'ed, so freeing a decoded image gives its memory
    back (by default the threshold rises to the largest block freed, and later image blocks stay in the heap).
    A no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def limits_of(app) -> Limits:
    return getattr(getattr(app, "state", None), "limits", None) or Limits()


def guarded_protocol(limits: Limits, refused: Callable[[str], None] = lambda reason: None):
    """uvicorn's h11 protocol with the connection cap and the header timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol  # deferred: heavy

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                refused("connections")
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc):
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def _arm_header_timer(self):
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timeout)

        def _disarm_header_timer(self):
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _header_timeout(self):
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return  # the headers came: the body's own deadline applies from here
            if self.cycle is not None and not self.cycle.response_complete:
                return
            refused("header_timeout")
            if self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
                body = b'{"error": {"field": "request", "message": "the request headers did not arrive in time", ' \
                       b'"status": 408}}'
                try:
                    self.transport.write(self.conn.send(h11.Response(status_code=408, headers=[
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")])) + self.conn.send(h11.Data(data=body))
                        + self.conn.send(h11.EndOfMessage()))
                except h11.LocalProtocolError:
                    pass
            self.transport.close()

    return GuardedH11Protocol


def make_server(app, sock: socket.socket, log_level: str = "warning", graceful_timeout: float = 10.0,
                on_ready: Callable[[], None] | None = None, access_log: bool = False, log_config: dict | None = None):
    import uvicorn  # deferred: heavy, and only needed once a server runs

    return_big_blocks_to_the_system()
    service = getattr(getattr(app, "state", None), "service", None)

    def refused(reason: str) -> None:
        if service is not None:
            service.metrics.counter("zscir_refused_total", "Requests refused by a limit, per limit", reason=reason)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                            access_log=access_log, lifespan="on", http=guarded_protocol(limits_of(app), refused),
                            **({"log_config": log_config} if log_config else {}))
    return Server(config)


def serve(app, host: str = "127.0.0.1", port: int = 8000, on_ready: Callable[[str], None] | None = None,
          log_level: str = "info", graceful_timeout: float = 10.0, access_log: bool = False,
          log_config: dict | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    sock = bind(host, port)
    url = url_of(sock)
    server = make_server(app, sock, log_level, graceful_timeout,
                         on_ready=(lambda: on_ready(url)) if on_ready else None, access_log=access_log,
                         log_config=log_config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread; yield its URL; stop it (gracefully) on exit."""
    sock = bind(host, port)
    ready = threading.Event()
    server = make_server(app, sock, on_ready=ready.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="zscir-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
