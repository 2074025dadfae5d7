"""t2: the dircache keeps newer local facts over what a fetch in flight brings back."""

from __future__ import annotations

from zonefs.cache.dircache import UNKNOWN, DirCache, Entry


def _file(size: int, etag: str) -> Entry:
    return Entry(False, size, etag)


def test_a_listing_fetched_while_an_upload_landed_keeps_the_upload() -> None:
    cache = DirCache(30.0)
    since = cache.begin_fetch()  # a listing of "d" starts: the store still has the old bytes
    cache.put_entry("d/f", _file(10, "new"))  # the upload lands meanwhile
    cache.put_entry("d/gone", None)  # and a delete
    names = {"f": _file(3, "old"), "gone": _file(1, "x"), "other": _file(5, "o")}
    cache.put_listing("d", names, since)
    cache.end_fetch()
    assert names["f"].etag == "new" and "gone" not in names  # what the caller goes on with
    listing = cache.listing("d")
    assert listing is not None and listing["f"].size == 10 and "gone" not in listing
    assert listing["other"].etag == "o"


def test_a_listing_older_than_an_invalidation_is_not_cached() -> None:
    cache = DirCache(30.0)
    since = cache.begin_fetch()
    cache.invalidate("d/f")  # changed in a way nothing is known of (a rename)
    cache.put_listing("d", {"f": _file(3, "old")}, since)
    cache.end_fetch()
    assert cache.listing("d") is None
    since = cache.begin_fetch()
    cache.invalidate_tree("d")
    cache.put_listing("d/sub", {"x": _file(1, "x")}, since)
    cache.end_fetch()
    assert cache.listing("d/sub") is None


def test_a_lookup_fetched_while_an_upload_landed_keeps_the_upload() -> None:
    cache = DirCache(30.0)
    since = cache.begin_fetch()
    cache.put_entry("f", _file(10, "new"))
    got = cache.put_fetched("f", _file(3, "old"), since)
    cache.end_fetch()
    assert got is not None and got.etag == "new"
    assert isinstance(cache.entry("f"), Entry) and cache.entry("f").etag == "new"  # type: ignore[union-attr]


def test_fetches_without_local_changes_are_cached_as_they_came() -> None:
    cache = DirCache(30.0)
    cache.put_entry("unrelated", None)  # before the fetch: does not matter
    since = cache.begin_fetch()
    cache.put_entry("elsewhere/x", None)  # another directory: does not matter either
    assert cache.put_fetched("f", _file(3, "e"), since) is not None
    names = {"a": _file(1, "a")}
    cache.put_listing("g", names, since)
    cache.end_fetch()
    assert cache.listing("g") == {"a": _file(1, "a")}
    assert cache.entry("f") is not UNKNOWN
    assert not cache._changed, "stamps are dropped once no fetch is in flight"
