"""The lean request path's transport: S3 requests signed here (SigV4) and sent over kept-alive
connections, for the hottest requests (HEAD, ListObjectsV2, small GETs, and single-part PUTs,
copies and DELETEs).

botocore spends about 1 ms of CPU on each request (event hooks, its generic serializer and
parser, urllib3), and zonefs runs every request under one GIL; a request signed here with a few
HMACs and sent with `http.client` costs about a fifth of that. This module owns only the
transport: SigV4 signing, a pool of kept-alive HTTP(S) connections, request bodies, retries.
It knows nothing of boto3, zonefs errors or `ObjectInfo`: `remote.py` hands in where requests
go (a `Target`), a credentials callable, TLS verification and timeouts; `reads.py` and
`writes.py` interpret every answer.

The signer is written out here (`HandSigner`) rather than botocore's public
`botocore.auth.S3SigV4Auth` because that costs more than 0.05 ms more per request. Measured by
bench/signing.py (HEADs and 1 KiB GETs on the kept-alive pool, 2 shared cores): on SeaweedFS
0.892 ms per request with botocore's signer against 0.825 ms (+0.068 ms), 0.091 against
0.0065 ms per signature alone; on moto (4.5 ms per answer, a new connection each) the
signature alone costs 0.148 against 0.027 ms, and the per-request difference is lost in noise.
`test_signature_is_botocores` checks that both give the same signature.

Invariants:
- Requests are GET, HEAD and DELETE without a body, and PUT with or without one; every one of
  them is safe to send again (a PUT replaces the object with the same bytes). The canonical URI
  is exactly the path sent: the key URI-encoded per RFC 3986 with '/' kept and no
  normalisation (as S3 wants); the canonical query string is exactly the query sent. `host`,
  `x-amz-content-sha256`, `x-amz-date`, with temporary credentials `x-amz-security-token`, and
  every header the caller asks to sign are signed, values trimmed as botocore trims them.
- The payload hash is the caller's (the body's SHA-256, or UNSIGNED-PAYLOAD where botocore
  would send that); without a body it is the empty body's.
- A body (`Body`) is sent from its start at every attempt. What its pieces raise (a cancel, a
  local file error) ends the request at once: it is not a transport failure, and is not retried.
  A body over `EXPECT_CONTINUE_OVER` bytes waits for the store's `100 Continue` (at most
  `CONTINUE_WAIT` seconds, as botocore waits), so that a store refusing it (a failed condition)
  answers before the body is sent.
- Credentials are fetched for every request (the callable refreshes expiring ones) and never
  appear in an exception, a log line or a `repr`: `Unreachable` carries an OS reason only.
- A connection goes back to the pool only once its answer was read to the end and the server
  did not ask to close it; an error, a body left unread, or an answer given before a body was
  sent closes it. An idle connection the server closed meanwhile is noticed before reuse and
  dropped.
- Connection failures (but a refused connection: the store is down, the request fails at once)
  and 500/502/503/504 answers are tried again, up to `max_attempts` in all, after a jittered
  exponential backoff (as botocore's standard mode); other answers go to the caller as they are.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlsplit

#: SHA-256 of the empty payload: the payload hash of every request without a body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: The payload hash of a body that is not signed (only where botocore would send it so).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: Answers that are tried again, as botocore's standard retry mode does.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
_MAX_BACKOFF = 20.0
#: An unread rest of an answer up to this size is read to keep the connection; more is not.
_DRAIN_LIMIT = 64 << 10
#: Bodies longer than this ask for `100 Continue` first (shorter ones fit in the socket buffers,
#: so a store that answers before reading them still gets them whole).
EXPECT_CONTINUE_OVER = 64 << 10
#: Seconds to wait for `100 Continue` before the body is sent anyway (botocore waits 1 s too).
CONTINUE_WAIT = 1.0
#: The longest interim answer read while waiting for `100 Continue`.
_INTERIM_LIMIT = 64 << 10


class Credentials(NamedTuple):
    """Keys to sign with (botocore's frozen credentials have the same three fields)."""

    access_key: str
    secret_key: str
    token: str | None

    def __repr__(self) -> str:  # never print a key, even in a traceback's locals
        return "Credentials(...)"


class Body(Protocol):
    """A request body that can be sent again from its start (each attempt sends it anew)."""

    @property
    def length(self) -> int:
        """The number of bytes `chunks` yields (sent as Content-Length)."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The body from its start, in pieces; each piece is sent before the next is asked
        for. What it raises ends the request (no retry)."""
        ...


class _BodyFailed(Exception):
    """What a body's pieces raised, carried past the transport's own error handling."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


class Unreachable(Exception):
    """The request failed in transport (refused, reset, timed out, TLS) on every attempt.

    `reason` is short and human ('Connection refused', 'connect timed out'); no credential or
    header is ever part of it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotUnderstood(Exception):
    """The lean path cannot handle this request or answer: the caller uses boto3 instead.

    `kind` is a short stable label (for logging each kind once), `detail` says more."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Target:
    """Where the requests of one bucket go, and the region they are signed for."""

    scheme: str  # "http" or "https"
    host: str  # to connect to (no brackets around an IPv6 address)
    port: int
    host_header: str  # the Host header, as signed: the URL's host, with a non-default port
    key_path: str  # the URL path that precedes an object's encoded key; ends with '/'
    bucket_path: str  # the URL path of bucket requests (listings)
    region: str

    @classmethod
    def from_urls(cls, object_url: str, key: str, bucket_url: str, region: str) -> Target:
        """The target of a bucket whose object `key` (unencoded, URL-safe) is at
        `object_url` and whose listing is at `bucket_url` (query strings are ignored).
        ValueError when the URLs do not fit that shape."""
        obj, bucket = urlsplit(object_url), urlsplit(bucket_url)
        if obj.scheme not in ("http", "https") or (obj.scheme, obj.netloc) != (
                bucket.scheme, bucket.netloc):
            raise ValueError("object and bucket URLs differ in scheme or host")
        if obj.username or obj.password or not obj.hostname:
            raise ValueError("the endpoint URL has user info or no host")
        suffix = "/" + key
        if not obj.path.endswith(suffix):
            raise ValueError("the object URL does not end with its key")
        default = 443 if obj.scheme == "https" else 80
        port = obj.port or default
        host = obj.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(obj.scheme, host, port, shown if port == default else f"{shown}:{port}",
                   obj.path[: -len(key)], bucket.path or "/", region)

    def object_path(self, key: str) -> str:
        """The URL path of the object `key`, RFC 3986-encoded ('/' and '~' kept)."""
        return self.key_path + quote(key, safe="/~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    """The SigV4 canonical query string, which is also the query sent.

    >>> canonical_query([("prefix", "a b/"), ("list-type", "2"), ("delimiter", "/")])
    'delimiter=%2F&list-type=2&prefix=a%20b%2F'
    """
    pairs = sorted((quote(k, safe="~"), quote(v, safe="~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def reason(exc: BaseException) -> str:
    """A short reason for a transport failure, without anything from the request.

    >>> reason(ConnectionRefusedError(111, "Connection refused"))
    'Connection refused'
    """
    if isinstance(exc, _ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time (read timeout)"
    if isinstance(exc, ssl.SSLError):
        return "TLS error: " + " ".join(str(exc.reason or exc).split())[:120]
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError
                  | BrokenPipeError):
        return "the store closed the connection"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer was cut short"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class _ConnectTimeout(TimeoutError):
    """The TCP connect (or TLS handshake) did not finish within the connect timeout."""


@contextmanager
def transport_errors() -> Iterator[None]:
    """Turn a transport failure while a body is read into `Unreachable` (after the first
    bytes of an answer nothing is retried, as botocore does not either)."""
    try:
        yield
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(reason(exc)) from None


def read_chunks(resp: http.client.HTTPResponse, size: int) -> Iterator[bytes]:
    """The body of `resp` in pieces of at most `size` bytes; transport errors, and a body
    shorter than its Content-Length, raise Unreachable."""
    with transport_errors():
        while True:
            chunk = resp.read(size)
            if not chunk:
                break
            yield chunk
    if resp.length:  # http.client's read(n) ends quietly when the connection does
        raise Unreachable("the answer was cut short")


class Signer(Protocol):
    """What signs the requests of one `Target` (SigV4 in headers, for S3): `HandSigner`."""

    def sign(self, method: str, path: str, query: str, creds: Credentials, *,
             payload: str = EMPTY_SHA256,
             signed: Mapping[str, str] | None = None) -> dict[str, str]: ...


class HandSigner:
    """SigV4 for S3 written out here: a few HMACs, the signing key kept for the day."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._keys: tuple[str, str, bytes] | None = None  # (secret, date, signing key)
        self._scope_tail = f"/{target.region}/s3/aws4_request"

    def _signing_key(self, secret: str, date: str) -> bytes:
        cached = self._keys
        if cached is not None and cached[0] == secret and cached[1] == date:
            return cached[2]
        key = _hmac(("AWS4" + secret).encode(), date)
        for part in (self.target.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        self._keys = (secret, date, key)
        return key

    def sign(self, method: str, path: str, query: str, creds: Credentials,
             *, payload: str = EMPTY_SHA256, now: float | None = None,
             signed: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers (Host, X-Amz-Date, X-Amz-Content-SHA256, Authorization, with temporary
        credentials X-Amz-Security-Token) that make `method path?query` a signed request
        whose body hashes to `payload`. `signed`: more headers to sign (lowercase names; the
        caller sends them). `now`: the time to sign at (tests)."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        date = amz_date[:8]
        host = self.target.host_header
        if signed:
            values = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
            if creds.token:
                values["x-amz-security-token"] = creds.token
            for name, value in signed.items():
                values[name] = " ".join(value.split())  # botocore's (and SigV4's) trim
            names = sorted(values)
            signed_names = ";".join(names)
            canonical_headers = "".join(f"{name}:{values[name]}\n" for name in names)
        elif creds.token:
            signed_names = "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
            canonical_headers = (f"host:{host}\nx-amz-content-sha256:{payload}\n"
                                 f"x-amz-date:{amz_date}\nx-amz-security-token:{creds.token}\n")
        else:
            signed_names = "host;x-amz-content-sha256;x-amz-date"
            canonical_headers = (f"host:{host}\nx-amz-content-sha256:{payload}\n"
                                 f"x-amz-date:{amz_date}\n")
        canonical = (f"{method}\n{path}\n{query}\n{canonical_headers}\n{signed_names}\n"
                     f"{payload}")
        scope = date + self._scope_tail
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   + hashlib.sha256(canonical.encode()).hexdigest())
        signature = hmac.new(self._signing_key(creds.secret_key, date), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers = {
            "Host": host,
            "X-Amz-Date": amz_date,
            "X-Amz-Content-SHA256": payload,
            "Authorization": (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                              f"SignedHeaders={signed_names}, Signature={signature}"),
        }
        if creds.token:
            headers["X-Amz-Security-Token"] = creds.token
        return headers


class SignedTransport:
    """Signed requests to one `Target` from any number of threads. Each takes an idle
    connection from the pool (or opens one) and gives it back when its answer is read."""

    def __init__(
        self,
        target: Target,
        credentials: Callable[[], Credentials | None],
        *,
        verify: bool | str = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_idle: int = 32,
        user_agent: str = "zonefs",
        signer: Signer | None = None,
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max(1, max_attempts)
        self._max_idle = max_idle
        self._user_agent = user_agent
        self._ssl: ssl.SSLContext | None = None
        if target.scheme == "https":
            self._ssl = _ssl_context(verify)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        #: Connections opened so far (kept-alive ones are reused: tests and status read it).
        self.opened = 0
        self._signer = signer or HandSigner(target)

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        t = self.target
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(t.host, t.port, timeout=self._connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(t.host, t.port, timeout=self._connect_timeout)
        with self._lock:
            self.opened += 1
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise _ConnectTimeout("connect timed out") from exc
        except BaseException:
            conn.close()
            raise
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)  # from here on, each read waits this long
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection that still looks open (and True), or a new one (and False)."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            if _still_open(conn):
                return conn, True
            conn.close()

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection (connections in use close when their request ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- requests --------------------------------------------------------------------------

    @contextmanager
    def request(
        self, method: str, path: str, params: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None, *, signed: Mapping[str, str] | None = None,
        body: Body | None = None, payload: str = EMPTY_SHA256,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send a signed `method` of `path` (already encoded: `Target.object_path`) and yield
        the answer, whatever its status, once its headers have arrived; the caller reads the
        body inside the `with`. `signed` headers (lowercase names) are signed and sent,
        `headers` only sent; `body` is sent with `payload` as its hash. Connection failures
        and 5xx answers are tried again first; when every attempt failed in transport,
        Unreachable. NotUnderstood when there are no credentials to sign with. What the
        body's pieces raise is raised as it is."""
        query = canonical_query(params)
        url = f"{path}?{query}" if query else path
        for attempt in range(1, self._max_attempts + 1):
            last = attempt == self._max_attempts
            creds = self._credentials()
            if creds is None:
                raise NotUnderstood("no credentials")
            all_headers = self._signer.sign(method, path, query, creds, payload=payload,
                                                 signed=signed)
            all_headers["User-Agent"] = self._user_agent
            if signed:
                all_headers.update(signed)
            if headers:
                all_headers.update(headers)
            conn: http.client.HTTPConnection | None = None
            reused = False
            try:
                conn, reused = self._take()
                resp = self._exchange(conn, method, url, all_headers, body)
            except _BodyFailed as failed:
                if conn is not None:
                    conn.close()  # half a body went out: the connection is unusable
                raise failed.error from None
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                # A refused connection means the store is down, not a glitch: the reader
                # gets its EIO at once (uploads are retried by the write-back queue).
                if last or (isinstance(exc, ConnectionRefusedError) and not reused):
                    raise Unreachable(reason(exc)) from None
                if not reused:  # a kept-alive connection that just died: try at once
                    _backoff(attempt)
                continue
            if resp.status in RETRY_STATUSES and not last:
                _finish(conn, resp, self._give_back)
                _backoff(attempt)
                continue
            done = False
            try:
                yield resp
                done = True
            finally:
                if done:
                    _finish(conn, resp, self._give_back)
                else:
                    conn.close()  # the body may be half read: the connection is unusable
            return

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, method: str, url: str,
                  headers: dict[str, str], body: Body | None) -> http.client.HTTPResponse:
        """Send one request on `conn` and read the head of its answer. Transport failures
        raise as OSError or HTTPException; what the body raises comes as _BodyFailed."""
        if body is None:
            conn.request(method, url, headers=headers)
            return conn.getresponse()
        conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(body.length))
        expect = body.length > EXPECT_CONTINUE_OVER
        if expect:
            conn.putheader("Expect", "100-continue")
        conn.endheaders()
        if expect:
            early = _early_answer(conn, method)
            if early is not None:
                return early
        pieces = body.chunks()
        while True:
            try:
                piece = next(pieces, None)
            except Exception as exc:  # a cancel or a local file error: not the transport's
                raise _BodyFailed(exc) from exc
            if piece is None:
                break
            conn.send(piece)
        return conn.getresponse()


def _early_answer(conn: http.client.HTTPConnection,
                  method: str) -> http.client.HTTPResponse | None:
    """After the head of a request that expects `100 Continue`: None when the store said
    `100 Continue`, or nothing within CONTINUE_WAIT (the body is then sent anyway, as botocore
    does); otherwise the store's final answer, given before the body was sent, parsed from
    the bytes read here and marked so that the connection is closed after it."""
    sock = conn.sock
    assert sock is not None
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(int(CONTINUE_WAIT * 1000)):
        return None
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            piece = sock.recv(_INTERIM_LIMIT)
            if not piece:
                raise http.client.RemoteDisconnected("closed before answering")
            data += piece
            if len(data) > _INTERIM_LIMIT:
                raise http.client.HTTPException("an over-long interim answer")
            continue
        if data.split(b" ", 2)[1:2] != [b"100"]:
            break
        # `100 Continue` (some servers send two): the body goes when nothing else came.
        data = data[end + 4:]
        if not data:
            return None
    # A final answer, given before the body was sent.
    resp = http.client.HTTPResponse(_Replay(data, sock), method=method)  # type: ignore[arg-type]
    resp.begin()
    resp.will_close = True  # the body it did not wait for was never sent
    return resp


class _Replay:
    """What `http.client.HTTPResponse` reads an answer from: bytes already received, then
    the rest from the socket."""

    def __init__(self, received: bytes, sock: socket.socket) -> None:
        self._received, self._sock = received, sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_ReplayRaw(self._received, self._sock))


class _ReplayRaw(io.RawIOBase):
    def __init__(self, received: bytes, sock: socket.socket) -> None:
        self._received, self._sock = memoryview(received), sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._received:
            n = min(len(buffer), len(self._received))
            buffer[:n] = self._received[:n]
            self._received = self._received[n:]
            return n
        return self._sock.recv_into(buffer)


def _finish(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
            give_back: Callable[[http.client.HTTPConnection], None]) -> None:
    """Pool `conn` if `resp` was read to the end (or has no more than a small error body
    left, which is read here) and the server keeps the connection; else close it."""
    try:
        if not resp.isclosed():
            if resp.chunked or resp.length is None or resp.length > _DRAIN_LIMIT:
                conn.close()  # a body nobody wants: cheaper to drop the connection
                return
            resp.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return
    if resp.will_close:
        conn.close()
    else:
        give_back(conn)


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection can be reused: nothing readable (EOF or stray bytes mean
    the server closed it or broke the protocol)."""
    sock = conn.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _backoff(attempt: int) -> None:
    """Jittered exponential backoff before attempt `attempt + 1`, like botocore's standard mode
    (0–1 s before the second attempt, 0–2 s before the third)."""
    time.sleep(random.random() * min(_MAX_BACKOFF, 2.0 ** (attempt - 1)))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """Certificate checks as botocore does them: False turns them off, a path names a CA
    bundle (file) or a directory of CA certificates, True uses the default trust store."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context()
