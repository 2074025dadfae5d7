"""What the lean path's answers say, shared by its reads and writes: an error answer as a
`StoreAnswer` (the error code and status `remote/s3_errors.py`'s table reads) or
`NotUnderstood` (the request goes to boto3), and the small parsers both use (ETags, version
ids, HTTP and ISO times, XML without namespaces).

Invariants:
- Values are what botocore parses from the same answer: ETags without quotes, a "null" or
  empty version id as None, times as seconds since the epoch; a value this module cannot
  read is `NotUnderstood`, never a guess.
- An error answer is a `StoreAnswer` only for statuses whose meaning is the same on every S3
  store (403, 404, 412, a delete marker, 5xx once retried, and the caller's `also` pairs);
  a redirect, a signature refused and any other status are `NotUnderstood`.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import xml.etree.ElementTree as ET

from zonefs.remote.lean.transport import RETRY_STATUSES, NotUnderstood, transport_errors

#: How much of an error answer's body is read for its code.
_ERROR_BODY_LIMIT = 64 << 10


class StoreAnswer(Exception):
    """The store answered with an error understood here; s3_errors.py's table names the error.

    `code` is the S3 error code of the body, or the HTTP status when there was none (as
    botocore reports it); `message` is the store's own message (shown for unknown codes)."""

    def __init__(self, status: int, code: str, message: str = "",
                 delete_marker: bool = False) -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message
        self.delete_marker = delete_marker


def http_date(value: str) -> float:
    """An HTTP date (Last-Modified, Date) as seconds since the epoch; NotUnderstood when it is
    not one or names no time zone.

    >>> http_date("Wed, 02 Dec 2026 03:53:08 GMT")
    1796183588.0
    """
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise NotUnderstood("header", "a date that is not an HTTP date") from None
    if when.tzinfo is None:
        raise NotUnderstood("header", "a date without a time zone")
    return when.timestamp()


def local_name(element: ET.Element) -> str:
    """An element's name without its namespace (botocore ignores namespaces too)."""
    tag = element.tag
    return tag.rpartition("}")[2] if tag[:1] == "{" else tag


def parse_xml(body: bytes, what: str) -> ET.Element:
    """The root element of an XML answer; NotUnderstood when it is not XML."""
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise NotUnderstood("xml", f"{what} is not XML") from None


def iso_time(text: str) -> float:
    """An ISO 8601 time of an XML answer (LastModified) as seconds since the epoch."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise NotUnderstood("xml", "a LastModified that is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise NotUnderstood("xml", "a LastModified without a time zone")
    return when.timestamp()


def _error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error body; empty strings when there is no such body."""
    if not body:
        return "", ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    code = message = ""
    for child in root if local_name(root) == "Error" else ():
        if local_name(child) == "Code":
            code = child.text or ""
        elif local_name(child) == "Message":
            message = child.text or ""
    return code, message


def error_of(resp: http.client.HTTPResponse,
             also: frozenset[tuple[int, str]] = frozenset()) -> Exception:
    """What an answer other than success means: a StoreAnswer, or NotUnderstood. `also`:
    more (status, error code) pairs that are StoreAnswers (those of writes)."""
    status = resp.status
    if 300 <= status < 400:
        return NotUnderstood("redirect", f"HTTP {status}")
    with transport_errors():
        body = resp.read(_ERROR_BODY_LIMIT) if resp.length != 0 else b""
    code, message = _error_code(body)
    if status == 400 and (resp.getheader("x-amz-bucket-region")
                          or code == "AuthorizationHeaderMalformed"):
        # AWS's answer to a request signed for another region than the bucket's.
        return NotUnderstood("redirect", "the bucket is in another region")
    delete_marker = resp.getheader("x-amz-delete-marker") == "true"
    if status == 403 and code == "SignatureDoesNotMatch":
        # Wrong keys, or a store that canonicalises a request unlike S3: boto3 tells which.
        return NotUnderstood("signature refused", "SignatureDoesNotMatch")
    if (status in (403, 404, 412) or status in RETRY_STATUSES or delete_marker
            or (status, code) in also):
        return StoreAnswer(status, code or str(status), message, delete_marker)
    return NotUnderstood("status", f"HTTP {status}")
