"""The command line: `zonefs` (`main`) and `mount.zonefs` (`mount_helper`)."""
