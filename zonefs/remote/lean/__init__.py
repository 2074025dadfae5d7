"""The lean request path: the hottest S3 requests signed and sent without botocore's
per-request cost, as a `Remote` (`remote.LeanRemote`) that wraps the boto3 `S3Remote` and hands
it every request it does not make or does not understand.

`transport.py` signs and sends (kept-alive connections, retries, 100-continue), `answers.py`
reads what an answer says, `reads.py` and `writes.py` make the requests, `remote.py` is the
`Remote`. Nothing outside this folder imports it but `open_remote` (remote/__init__.py), the
one place that wraps: deleting the folder and that wrap leaves zonefs on boto3 alone.
"""
