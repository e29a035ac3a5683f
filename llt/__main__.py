"""`python -m llt ...` is the same as the `llt` command."""

import sys

from llt.cli import main

sys.exit(main())
