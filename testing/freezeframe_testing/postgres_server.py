"""Fixtures that start a private postgres server for one test."""
