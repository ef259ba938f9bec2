"""Faults for tests: a real service made to go away and come back, without stopping it.

:class:`TcpRelay` stands between a client and a service (SeaweedFS's S3, say) on a port of its
own. Down, the port refuses connections and the connections it was relaying are cut, as when
the service is away or the network drops mid-transfer; up again, it relays to the same
service. Its port is picked when it is made, so a client can be pointed at a service that
is not there yet.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit

from protege.services.process import free_port


class TcpRelay:
    def __init__(self, target_url: str, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        target = urlsplit(target_url)
        if target.hostname is None or target.port is None:
            raise ValueError(f"{target_url!r}: a relay needs the service's host and port, e.g. http://h:8333")
        self.target = (target.hostname, target.port)
        self.host = host
        self.port = port or free_port(host)
        self.connections = 0  # accepted since it was made
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> TcpRelay:
        """Relay from now on (idempotent)."""
        if self._listener is None:
            listener = socket.create_server((self.host, self.port))  # SO_REUSEADDR: up again at once
            self._listener = listener
            self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
            self._accepting.start()
        return self

    def down(self) -> None:
        """Refuse new connections and cut those open (idempotent)."""
        with self._lock:
            listener, self._listener = self._listener, None
            cut = list(self._open)
            self._open.clear()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            listener.close()
        if self._accepting is not None:
            self._accepting.join(5)
            self._accepting = None
        for sock in cut:
            _close(sock)

    def __enter__(self) -> TcpRelay:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._open |= {client, upstream}
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:  # either side ending ends the relayed connection (HTTP has no use for half a one)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
