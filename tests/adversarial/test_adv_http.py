"""Slow and broken HTTP clients over raw sockets: trickled headers and bodies get a 408 and a
close, silent connections are closed, malformed chunked framing gets a 400/413 and a close, a
client that leaves mid-upload is counted as gone (499), not as a server error, and the open
connections per client address are capped. Every case ends with the canary (conftest)."""
from __future__ import annotations

import re
import select
import socket
import time

import httpx
import pytest

from adversarial_helpers import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, MAX_CONNECTIONS_PER_CLIENT


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_until_close(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; fails if it is still open after limit_s."""
    start = time.monotonic()
    data = b""
    while True:
        left = limit_s - (time.monotonic() - start)
        assert left > 0, f"connection still open after {limit_s} s; got {data[:200]!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def status_of(data: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    assert match, data[:200]
    return int(match.group(1))


def post_head(server, length: int | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /v1/completions HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
             "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_trickled_headers_get_408_and_close(alive):
    sock = connect(alive)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    # One byte every 0.3 s would keep a connection open forever without a header deadline.
    while time.monotonic() - start < HEADER_TIMEOUT_S + 3:
        try:
            sock.sendall(b"X")
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], 0.3)
        if readable:
            break
    data, _ = read_until_close(sock, 5)
    assert status_of(data) == 408
    assert b'"code":"request_timeout"' in data.replace(b" ", b"")
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 3
    sock.close()


def test_silent_connection_is_closed(alive):
    sock = connect(alive)
    data, elapsed = read_until_close(sock, HEADER_TIMEOUT_S + 5)
    assert data == b""  # nothing was asked, nothing is answered
    assert elapsed >= HEADER_TIMEOUT_S * 0.8
    sock.close()


def test_trickled_body_gets_408_and_close(alive):
    sock = connect(alive)
    sock.sendall(post_head(alive, length=200) + b'{"model": "x", ')
    data, elapsed = read_until_close(sock, BODY_TIMEOUT_S + 5)
    assert status_of(data) == 408
    assert elapsed >= BODY_TIMEOUT_S * 0.8
    sock.close()


@pytest.mark.parametrize("chunk, status", [
    (b"fffffffffffffffffff\r\nabc", 400),   # overflowing size: h11 would wait for 2^76 bytes
    (b"7fffffff\r\nabc", 413),              # a chunk larger than the whole body limit
    (b"3\r\nabcXY", 400),                   # no CRLF after the chunk's data
    (b"zz\r\nabc\r\n", 400),                # not a hex size
])
def test_malformed_chunked_framing_gets_an_answer_and_a_close(alive, chunk, status):
    sock = connect(alive)
    sock.sendall(post_head(alive, chunked=True) + chunk)
    data, _ = read_until_close(sock, 5)
    assert status_of(data) == status
    assert b"application/json" in data
    sock.close()


def scrape_status(server, status: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(r'^cormorant_http_requests_total\{status="%s"\} (\S+)$' % status, text,
                      re.M)
    return float(match.group(1)) if match else 0.0


def test_client_leaving_mid_upload_is_not_a_server_error(alive):
    before_500, before_499 = scrape_status(alive, "500"), scrape_status(alive, "499")
    sock = connect(alive)
    sock.sendall(post_head(alive, length=5000) + b'{"model": "x", "prompt": "')
    time.sleep(0.3)  # the route is reading the body
    sock.close()
    deadline = time.monotonic() + 10
    while scrape_status(alive, "499") == before_499:
        assert time.monotonic() < deadline, "the disconnect was never counted as 499"
        time.sleep(0.1)
    assert scrape_status(alive, "500") == before_500


def test_open_connections_per_address_are_capped(alive):
    socks = [connect(alive) for _ in range(MAX_CONNECTIONS_PER_CLIENT + 4)]
    try:
        time.sleep(0.3)
        refused = []
        for sock in socks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                data, _ = read_until_close(sock, 5)
                refused.append(data)
        # Idle keep-alive connections of earlier cases may still hold a few of the slots.
        assert 4 <= len(refused) <= 10, len(refused)
        assert all(status_of(data) == 503 and b"retry-after" in data.lower()
                   for data in refused)
    finally:
        for sock in socks:
            sock.close()
