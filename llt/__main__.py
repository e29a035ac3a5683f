"""`python -m llt ...` is the same as the `llt` command."""

import sys

try:
    from llt.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python was still importing llt: nothing was done
    print("llt: interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
