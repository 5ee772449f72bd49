"""``python -m wmplan`` is the ``wmplan`` command."""

import sys

from wmplan.cli import main

sys.exit(main())
