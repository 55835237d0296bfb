"""The dumps view: the snapshot stage of a profile that has none.

A profile whose applications all capture in a mode that completes after the thaw
(``capture = "logical"``: PostgreSQL's ``pg_dump --snapshot``, MariaDB's dump begun under
the commit block, Redis's forked dump, SQLite's backup-API copy) needs no snapshot of
its files: its copy stages read the dumps. The core then puts this stage, named
:data:`DUMPS`, before the copy stages: each run's view is an empty folder,
``<state dir>/<profile>/dumps/<run id>/``, made inside the window in microseconds,
which the completions fill after the thaw; the copy stages read it, and the run
releases it once they are done (``keep`` cannot be set on a stage the profile does not
list). An application in the ``"snapshot"`` mode has nothing copied by it, so ``check``
refuses one (:func:`freezeframe.preflight.pairing_problems`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from freezeframe.boundary import Artifact, StageContext, WindowEstimate
from freezeframe.folder_view import FolderView

__all__ = ["DUMPS", "DumpsView"]

#: The name of the stage; a profile that lists no snapshot stage cannot use it for another.
DUMPS = "dumps"


class DumpsView(FolderView):
    """An empty folder per run, completed after the thaw with the applications' dumps."""

    kind = "dumps"

    def run(self, context: StageContext) -> Artifact:
        """The run's empty view: nothing is copied inside the window."""
        view, partial = self.dir / context.run_id, self._partial(context.run_id)
        partial.mkdir(mode=0o700)
        partial.chmod(0o755)
        partial.rename(view)  # made durable by the engine's syncfs after the thaw
        return Artifact(id=context.run_id, view=view, metadata={"method": "dumps", "paths": []})

    def window_estimate(self, data_paths: Sequence[Path]) -> WindowEstimate:
        """Nothing is copied inside the window."""
        return WindowEstimate("copy", 0, "the view holds only dumps made after the thaw")
