"""Plan: ClusterSpec -> the exact commands run on each host (pure)."""
