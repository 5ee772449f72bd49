"""The core of wmplan: world models, planners, tasks and episodes.

Pure torch (plus simulators): nothing here imports Ray, MLflow or Optuna, so the core runs
anywhere and the layers above (storage, jobs, tuning) depend on it, never the reverse.
"""
