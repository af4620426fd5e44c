"""Ports for the servers a test starts: each one free when handed out, and still free when
the server binds it seconds later (HAProxy, started after four gateways, once found its
port already taken by one of them)."""

from __future__ import annotations

import socket

from tests.support.processes import ephemeral_range, free_port


def test_never_hands_out_the_same_port_twice() -> None:
    # bind(("127.0.0.1", 0)) picks at random among ~28,000 ports: 1,000 picks repeat one
    # with a probability of 1 - e^-17.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    """Outgoing connections take their source ports from that range: one could take the
    port in the seconds between free_port() and the server's bind."""
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert not [port for port in ports if low <= port <= high]


def test_a_port_in_use_is_never_handed_out() -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            listener = socket.create_server(("127.0.0.1", free_port()))
            held.append(listener)
        taken = {listener.getsockname()[1] for listener in held}
        assert not taken & {free_port() for _ in range(200)}
    finally:
        for listener in held:
            listener.close()
