"""Fixtures that start a private redis server for one test."""
