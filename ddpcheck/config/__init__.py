"""Config: the files users bring (hosts.yaml, hostfiles, SLURM env, ssh_config, hostlists) -> a ClusterSpec."""
