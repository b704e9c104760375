"""Plain HTTP/1.1 keep-alive connections for service-to-service calls (``http://`` URLs; :mod:`facedex.rpc`).

Why: a match makes two such calls (API -> proxy -> brute-force Matcher), and aiohttp's client spent ~0.16 ms of CPU
on each on this machine class, against ~0.02 ms for a request written to and read from a kept-alive asyncio stream
(same bare server, in process; docs/benchmarks.md); in the API it was a third of the request's time (py-spy). These
calls need little of a general client: one small POST or GET to a facedex service at a time per connection, no
redirects, cookies, proxies or TLS. Responses are parsed by ``httptools`` (llhttp, what uvicorn parses requests
with): a body framed by its length or chunked (what the services send) is read whole; one ended only by closing
the connection is refused as incomplete.

Connections are reused while idle for less than ``keepalive_s`` (below the services' own keep-alive, 75 s), so a
request is never written into a connection the server is about to close: a POST there could not be safely retried.
A connection whose exchange did not end cleanly (an error, a timeout, a cancel) is closed, never reused; idle ones
past ``keepalive_s`` are closed as soon as the pool is used again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

import httptools

READ_BYTES = 1 << 16


class ProtocolError(ConnectionError):
    """The server's answer was not an HTTP/1.1 response, or the connection closed before it was whole."""


class _Answer:
    """httptools callbacks for one exchange: the final answer's status and body, whether it is whole, and whether the
    connection stays open (known once its headers are read: llhttp forgets it when the message completes). Interim
    (1xx) answers before it, in the same read or not, are parsed and dropped."""

    __slots__ = ("chunks", "complete", "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        if self.complete:  # bytes past the final answer: the connection is out of step (raises, never reused)
            raise ProtocolError("more than one answer to one request")
        self.chunks = []

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = self.status >= 200


class _AnswerWithHeaders(_Answer):
    """:class:`_Answer` that also keeps the final answer's headers (names lower-cased), for callers that read them."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        super().__init__()
        self.headers: dict[str, str] = {}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text  # repeated: one list


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def usable(self, keepalive_s: float) -> bool:
        return (not self.writer.is_closing() and not self.reader.at_eof()
                and time.monotonic() - self.idle_since < keepalive_s)

    async def exchange(self, request: bytes, headers_out: dict[str, str] | None = None) -> tuple[int, bytes, bool]:
        """Write one request, read its response: (status, body, whether the connection may be reused); the response's
        headers go into ``headers_out`` if given."""
        self.writer.write(request)
        answer = _Answer() if headers_out is None else _AnswerWithHeaders()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        while not answer.complete:  # one parser for the exchange: an interim (1xx) answer and the final one may
            data = await self.reader.read(READ_BYTES)  # come in one read
            if not data:
                raise ProtocolError("the connection closed before the answer was whole")
            try:
                parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # (101: no protocol switch here)
                raise ProtocolError(f"not an HTTP answer: {exc}") from exc
        if isinstance(answer, _AnswerWithHeaders):
            assert headers_out is not None
            headers_out.update(answer.headers)
        return answer.status, b"".join(answer.chunks), answer.keep_alive

    def close(self) -> None:
        self.writer.close()


class KeepAlivePool:
    """Up to ``limit`` connections to one ``host:port``, reused while idle for less than ``keepalive_s``.

    Belongs to the event loop it is first used in (its connections do).
    """

    def __init__(self, host: str, port: int, limit: int, keepalive_s: float) -> None:
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self._authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()  # an IPv6 literal in []
        self._idle: deque[_Connection] = deque()  # the most recently used on the right
        self._slots = asyncio.Semaphore(limit)

    async def request(self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes = b"",
                      headers_out: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; with ``headers_out``, the response's headers are put there (names lower-cased).
        Raises ``OSError`` (``ConnectionError``, ``ProtocolError``) when the server could not be reached or did not
        answer whole; the caller bounds the time (``asyncio.timeout``)."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), b"Host: ", self._authority, b"\r\n",
                b"Content-Length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head += [b"\r\n", body]
        async with self._slots:
            conn = self._take()
            if conn is None:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_BYTES)
                conn = _Connection(reader, writer)
            reusable = False
            try:
                status, answer, reusable = await conn.exchange(b"".join(head), headers_out)
                return status, answer
            finally:
                if reusable:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:  # an error, a timeout or a cancel mid-exchange leaves the stream in an unknown state
                    conn.close()

    def _take(self) -> _Connection | None:
        while self._idle and not self._idle[0].usable(self.keepalive_s):  # expired or closed by the server
            self._idle.popleft().close()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed meanwhile
            if conn.usable(self.keepalive_s):
                return conn
            conn.close()
        return None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
