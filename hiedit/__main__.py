"""Allow ``python -m hiedit``."""

from hiedit.cli import main

raise SystemExit(main())
