"""Writing restored files so that nothing a backup holds can reach outside the target.

A backup is read from places freezeframe does not trust: whoever can write an
artifact folder or a repository can craft what a restore reads. So a restore
never resolves a path it writes to, nor one it reads a snapshot from. This
module gathers, under the one name plug-ins and backends import, what does
that; each piece lives in the module named for its job:

- :class:`Target` and :class:`Meta` (:mod:`freezeframe.restore_target`): the
  folder a restore writes into, which makes every entry relative to an open
  descriptor and holds device nodes, FIFOs and setuid/setgid bits back until
  the artifact is verified; :func:`strip_special` for a tree a backup tool
  restored itself (restic, borg).
- :func:`copy_in` (:mod:`freezeframe.restore_copy`): feeds a :class:`Target` from a
  snapshot's tree (clone, btrfs), opening the source the same way.
- :func:`open_folder`, :func:`is_folder_below`, :func:`exists_below`,
  :func:`read_below`, :func:`replace_below`, :func:`unlink_below`,
  :func:`remove_below` (:mod:`freezeframe.nofollow`): let application plug-ins
  fix up restored data (``prepare_restored``) without following a symlink
  inside the target.
"""

from __future__ import annotations

from freezeframe import nofollow
from freezeframe.nofollow import exists_below as exists_below
from freezeframe.nofollow import is_folder_below as is_folder_below
from freezeframe.nofollow import open_folder as open_folder
from freezeframe.nofollow import read_below as read_below
from freezeframe.nofollow import remove_below as remove_below
from freezeframe.nofollow import replace_below as replace_below
from freezeframe.nofollow import unlink_below as unlink_below
from freezeframe.restore_copy import copy_in
from freezeframe.restore_target import Meta, Target, strip_special

# The fix-up helpers, re-exported under the name plug-ins import.
__all__ = ["Meta", "Target", "copy_in", "strip_special"]
__all__ += nofollow.__all__
