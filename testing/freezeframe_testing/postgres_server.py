"""Fixtures that start a private postgres server for one test (filled in with the postgres plug-in)."""
