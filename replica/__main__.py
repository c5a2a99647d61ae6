"""`python -m replica`: the same command line as the `replica` script."""

import sys

from replica.cli.main import main

sys.exit(main())
