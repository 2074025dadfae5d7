"""zonefs: mount an S3-compatible bucket (or a prefix in it) as a POSIX directory tree."""

__version__ = "0.1.0"
