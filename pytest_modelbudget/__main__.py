"""``python -m pytest_modelbudget``: the command line lives in :mod:`.cli.main`."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
