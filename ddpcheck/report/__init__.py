"""Report: records and findings -> the table, JSON, CSV, JUnit (pure rendering)."""
