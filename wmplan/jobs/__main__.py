"""Entry point for cluster jobs: ``ray job submit --working-dir . -- python -m wmplan.jobs run CONFIG``.

The same arguments as ``wmplan`` (any subcommand); inside a Ray job, ``ray.init()`` joins the
job's cluster because Ray sets ``RAY_ADDRESS`` for the job's driver.
"""

import sys

from wmplan.cli import main

sys.exit(main())
