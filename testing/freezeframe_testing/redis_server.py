"""Fixtures that start a private redis server for one test (filled in with the redis plug-in)."""
