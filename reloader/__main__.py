"""``python -m reloader`` is the same as the ``nginx-upstream-reloader`` command."""

import sys

from reloader.cli import main

if __name__ == "__main__":
    sys.exit(main())
