"""freezeframe's conformance kit: contract tests and fixtures for plug-ins and backends.

Installing the ``freezeframe-testing`` distribution loads its pytest plug-in
(:mod:`freezeframe_testing.plugin`: fixtures for real servers, loop-device
filesystems, writers, the CLI). A plug-in's tests subclass the contract classes::

    from freezeframe_testing import ApplicationPluginContract, BackendContract
"""

from freezeframe_testing.contract import ApplicationPluginContract, BackendContract

__all__ = ["ApplicationPluginContract", "BackendContract"]
