"""Fixtures that start a private mariadb server for one test."""
