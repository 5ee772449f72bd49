"""Jobs: parallel execution of episodes on actor pools (depends on platform and storage)."""

from wmplan.jobs.cluster import hide_worker_death_notices

hide_worker_death_notices()  # before anything imports ray: Ray reads the setting on import
