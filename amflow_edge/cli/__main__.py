"""`python -m amflow_edge.cli`, as the tests and a checkout without the console script run it."""

import sys

from amflow_edge.cli.main import main

sys.exit(main())
