"""`python -m zonefs` runs the command-line interface."""

from zonefs.cli.main import main

raise SystemExit(main())
