"""Entry point for cluster jobs: ``ray job submit --working-dir . -- $WMPLAN_PYTHON -m wmplan.jobs run CONFIG``.

The same arguments as ``wmplan`` (any subcommand); inside a Ray job, ``ray.init()`` joins the
job's cluster because Ray sets ``RAY_ADDRESS`` for the job's driver. Name the interpreter of
wmplan's environment on the nodes (and pass it as the runtime env's ``py_executable`` for the
actors): a bare ``python`` is whatever the head's PATH finds, which may lack wmplan's dependencies.
The README's "On a cluster" section has the whole command.
"""

import sys

from wmplan.cli import main

sys.exit(main())
