"""The mount side: the only importers of pyfuse3. `daemon` runs one mount's life, `fuse_ops`
turns FUSE calls into core calls (and errors into errnos), `inodes` maps inodes to paths, and
`control` is the control socket's client and server (`sync`, `status`, `umount`)."""
