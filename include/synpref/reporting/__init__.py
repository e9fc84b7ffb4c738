"""Reporting: JSON summaries and the HTML reports with their figures (read records, never every pair)."""
