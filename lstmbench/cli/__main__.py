"""`python -m lstmbench.cli`: the `lstmbench` command."""

import sys

from lstmbench.cli import main

sys.exit(main())
