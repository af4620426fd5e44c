"""A TCP relay between one MQTT client and the broker that can lose what the client sends.

To reproduce "the device took the command, and died before its answer went out" exactly:
bytes from the broker pass unchanged; the client's packets pass until ``cut_after`` is
seen in what the broker sent, and from then on the client's PUBLISH packets are dropped
(its PUBACKs, pings and the rest still pass: the broker believes the command delivered).
MQTT packets are split by their fixed header (type nibble, remaining-length varint); no
other parsing. Loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.processes import free_port

PUBLISH = 3


class MqttCut:
    def __init__(self, broker_port: int, cut_after: bytes | None = None) -> None:
        """``cut_after`` may be set later (e.g. once the session id is known)."""
        self.broker_port = broker_port
        self.port = free_port()
        self.cut_after = cut_after
        self.cut = threading.Event()  # set once the client's publishes are being dropped
        self.dropped = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        for sock in (self._server, *self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> MqttCut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self._sockets += [client, broker]
            threading.Thread(target=self._down, args=(broker, client), daemon=True).start()
            threading.Thread(target=self._up, args=(client, broker), daemon=True).start()

    def _down(self, broker: socket.socket, client: socket.socket) -> None:
        """Broker -> client, unchanged; watching for ``cut_after``."""
        seen = b""
        with contextlib.suppress(OSError):
            while data := broker.recv(65536):
                seen = (seen + data)[-131072:]
                if self.cut_after and self.cut_after in seen:
                    self.cut.set()
                client.sendall(data)
        _close(client, broker)

    def _up(self, client: socket.socket, broker: socket.socket) -> None:
        """Client -> broker, packet by packet, PUBLISH dropped once cut."""
        buffer = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                buffer += data
                while (packet := _split(buffer)) is not None:
                    size = packet
                    head, buffer = buffer[:size], buffer[size:]
                    if self.cut.is_set() and head[0] >> 4 == PUBLISH:
                        self.dropped += 1
                        continue
                    broker.sendall(head)
        _close(client, broker)


def _split(buffer: bytes) -> int | None:
    """The size of the first whole packet in ``buffer``, or None if it is not all there."""
    if len(buffer) < 2:
        return None
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    size = index + length
    return size if len(buffer) >= size else None


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
