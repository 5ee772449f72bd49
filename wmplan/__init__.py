"""wmplan: planning with learned world models, at scale.

Subpackages, in the direction of their dependencies:

- :mod:`wmplan.platform`: world models, planners, tasks and episodes (pure torch).
- :mod:`wmplan.storage`: Parquet schemas and files, experiment tracking.
- :mod:`wmplan.jobs`: parallel execution of episodes.
- :mod:`wmplan.tuning`: hyperparameter studies.
"""

__version__ = "0.1.0"
