"""probe_port tells the three answers of a TCP port apart, on loopback: open, refused, silent."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from kernelprovider.provisioner import listening, probe_port


@pytest.fixture
def listener() -> Iterator[Any]:
    """make(backlog): a loopback listener that never accepts."""
    made: list[socket.socket] = []

    def make(backlog: int) -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(backlog)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_open_port(listener: Any) -> None:
    port = listener(8).getsockname()[1]
    assert await probe_port("127.0.0.1", port) == "open"
    assert await listening("tcp", "127.0.0.1", port)


async def test_closed_port_refuses() -> None:
    port = free_port()
    assert await probe_port("127.0.0.1", port) == "refused"
    assert not await listening("tcp", "127.0.0.1", str(port))


async def test_port_that_drops_connections_is_silent(listener: Any) -> None:
    # A listener whose accept queue is full drops further SYNs, as a DROP firewall rule does.
    port = listener(0).getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    try:
        answers = [await probe_port("127.0.0.1", port, timeout=0.3) for _ in range(2)]
        assert "silent" in answers
    finally:
        for c in fillers:
            c.close()
