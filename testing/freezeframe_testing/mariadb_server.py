"""Fixtures that start a private mariadb server for one test (filled in with the mariadb plug-in)."""
