"""`python -m llt ...` is the same as the `llt` command."""

import sys

from llt.cli import main

if __name__ == "__main__":
    sys.exit(main())
