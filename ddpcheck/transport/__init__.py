"""Transport: the only place that talks to hosts (local processes, SSH, jump hosts)."""
