"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks).

    with serve_in_thread(app) as url:        # a free port on 127.0.0.1
        httpx.get(url + "/healthz")

The socket is bound here, before uvicorn starts, so port 0 gives a free port
whose number is known at once. uvicorn stops gracefully on SIGINT/SIGTERM:
it stops accepting, lets running requests finish (``graceful_timeout``
seconds at most), then runs the app's shutdown (index watcher, search workers).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Callable, Iterator

from zscir.errors import ZscirError


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


def make_server(app, sock: socket.socket, log_level: str = "warning", graceful_timeout: float = 10.0,
                on_ready: Callable[[], None] | None = None, access_log: bool = False, log_config: dict | None = None):
    import uvicorn  # deferred: heavy, and only needed once a server runs

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and on_ready is not None:
                on_ready()

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                            access_log=access_log, lifespan="on", **({"log_config": log_config} if log_config else {}))
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
