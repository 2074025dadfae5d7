"""Pending state: what this mount acknowledged and the bucket does not hold yet.

The ledger (`ledger`) is the one owner of the pending rows (`rows`), the pending deletes
(`deletes`) and the write-back queue (`writeback`); only modules of this wing change them. One
upload (`upload`) sends a row and returns an outcome; `leftovers` journals multipart uploads
and aborts the ones a dead process left."""
