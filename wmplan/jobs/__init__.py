"""Jobs: parallel execution of episodes on actor pools (depends on platform and storage)."""
