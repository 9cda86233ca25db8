"""The in-job API (Monitor, check_consistency): runs inside the user's training processes."""
