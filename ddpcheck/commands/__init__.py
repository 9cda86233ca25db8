"""Commands: one module per ddpcheck command (options and how it runs)."""
