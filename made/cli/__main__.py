"""`python -m made.cli`: the `made` command."""

import sys

from made.cli import main

sys.exit(main())
