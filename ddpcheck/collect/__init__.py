"""Collect: raw text that came back from hosts -> records (pure)."""
