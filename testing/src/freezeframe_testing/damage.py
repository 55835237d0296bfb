"""Ways a kept snapshot view gets damaged, for the tests of ``verify`` (clone, btrfs).

Each damage takes the view, one regular file's image in it and the view's manifest,
damages the view, and returns what ``verify``'s one-line error must say.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from freezeframe.tools import run_tool
from freezeframe_testing.plugin import require_tool

__all__ = ["DAMAGES", "Damage", "flip_byte", "writable"]

#: ``damage(view, image, manifest) -> the text verify's error must contain``
Damage = Callable[[Path, Path, Path], str]


def flip_byte(view: Path, image: Path, manifest: Path) -> str:
    """Invert one byte in the middle of the file: same size, same times, other content."""
    size = image.stat().st_size
    assert size > 2, f"{image} is too small to flip a byte in its middle"
    with open(image, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)[0]
        f.seek(size // 2)
        f.write(bytes([byte ^ 0xFF]))
    return f"{image.relative_to(view)} changed"


def zero_fill(view: Path, image: Path, manifest: Path) -> str:
    """Overwrite the file with as many zero bytes (what a lost extent reads as)."""
    image.write_bytes(bytes(image.stat().st_size))
    return f"{image.relative_to(view)} changed"


def remove(view: Path, image: Path, manifest: Path) -> str:
    """Remove the file."""
    image.unlink()
    return f"{image.relative_to(view)} missing"


def add_file(view: Path, image: Path, manifest: Path) -> str:
    """Put a file the snapshot never held beside it."""
    stray = image.with_name("stray.bin")
    stray.write_bytes(b"not in the backup\n")
    return f"{stray.relative_to(view)} extra"


def forge_manifest(view: Path, image: Path, manifest: Path) -> str:
    """Flip a byte of the file and rewrite its manifest line to match: view and manifest
    agree, and only the digest the catalog keeps can tell."""
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    flip_byte(view, image, manifest)
    after = hashlib.sha256(image.read_bytes()).hexdigest()
    text = manifest.read_text()
    assert text.count(before) == 1, f"{image}'s digest is not in {manifest} once"
    manifest.write_text(text.replace(before, after))
    return f"manifest {manifest} is not the one recorded"


DAMAGES: dict[str, Damage] = {
    "flipped-byte": flip_byte,
    "zeroed": zero_fill,
    "removed": remove,
    "added": add_file,
    "forged-manifest": forge_manifest,
}


@contextmanager
def writable(folder: Path) -> Iterator[None]:
    """``folder`` writable for the block: a read-only btrfs snapshot is made writable and
    read-only again after (as an admin, or damage, does); any other folder is left as is."""
    if not (folder.is_dir() and folder.stat().st_ino == 256):  # a btrfs subvolume's root
        yield
        return
    btrfs = require_tool("btrfs")
    run_tool([btrfs, "property", "set", "-ts", str(folder), "ro", "false"], timeout=60)
    try:
        yield
    finally:
        run_tool([btrfs, "property", "set", "-ts", str(folder), "ro", "true"], timeout=60)
