"""A loopback TCP proxy that forwards normally, then stops forwarding on request.

`StallProxy(upstream_port)` listens on 127.0.0.1; every connection is forwarded to the
upstream server byte for byte. `stall_after(n)`: once `n` more bytes have gone from the
server to the clients, the proxy stops forwarding in both directions but keeps every
socket open: the server stays connected (it blocks writing), the client sees a live
connection that sends nothing more. That is a hung middlebox or a server wedged
mid-reply: TCP keepalives are still answered by the kernels, nothing closes.
`stall_on(marker)`: the same from the moment a client sends bytes containing `marker`
(which are not forwarded): a statement that never gets an answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class StallProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._budget: int | None = None  # server->client bytes still forwarded; None: all
        self._marker: bytes | None = None
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="stall-proxy", daemon=True)
        self._thread.start()

    def stall_after(self, nbytes: int) -> None:
        with self._lock:
            self._budget = nbytes

    def stall_on(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for src, dst, down in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while not self._closed.is_set():
                if self.stalled.is_set():
                    self._closed.wait(0.05)  # hold the sockets open, forward nothing
                    continue
                data = src.recv(16384)
                if not data:
                    break
                if not downstream:
                    with self._lock:
                        if self._marker is not None and self._marker in data:
                            self.stalled.set()
                            continue
                if downstream:
                    with self._lock:
                        if self._budget is not None:
                            if len(data) >= self._budget:
                                data = data[: self._budget]
                                self.stalled.set()
                            self._budget -= len(data)
                if data:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if not self.stalled.is_set():
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
