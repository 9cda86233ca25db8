"""Code that runs on each host and in each rank (agent, probe, sweep, facts, hang scan): standard library and torch only."""
