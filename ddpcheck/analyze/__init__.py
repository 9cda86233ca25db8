"""Analyze: records -> findings, root cause first, and the verdict (pure)."""
