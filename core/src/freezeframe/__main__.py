"""``python -m freezeframe`` is the ``freezeframe`` command."""

from freezeframe.cli import entry

entry()
