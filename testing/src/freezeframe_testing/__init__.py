"""freezeframe's conformance kit: contract tests and fixtures for plug-ins and backends.

Installing the ``freezeframe-testing`` distribution loads its pytest plug-in
(:mod:`freezeframe_testing.plugin`: fixtures for real servers, loop-device
filesystems, writers, the CLI). A plug-in's tests subclass the contract classes::

    from freezeframe_testing import ApplicationPluginContract, BackendContract
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freezeframe_testing.contract import ApplicationPluginContract, BackendContract

__all__ = ["ApplicationPluginContract", "BackendContract"]


def __getattr__(name: str) -> Any:
    # Imported when first asked for, so ``python -m freezeframe_testing.components``
    # does not find its own module already imported by the package.
    if name in __all__:
        from freezeframe_testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
