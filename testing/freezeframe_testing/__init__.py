"""Shared test helpers and fixtures for every freezeframe package (loaded with ``-p``)."""
