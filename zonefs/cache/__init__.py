"""Local caches on disk: the SQLite journal (`journal`), the content-addressed blob store
(`blobs`) and the in-memory listing cache (`dircache`). Each owns its files or memory alone;
they know nothing of pending changes or of the store."""
