"""The filesystem core: POSIX semantics by path, with no knowledge of FUSE or inodes.

`vfs.Vfs` is its entry point; `view` says what a path shows, `files` serves open files,
`renames` moves objects in the store, `objects` and `fetch` read them, `versions` shows the
history, `content` the content identity; `values` holds what the core hands out."""
