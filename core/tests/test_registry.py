"""Tests of registry.py: discovery through entry points and pluggy, and every way a plug-in breaks.

In-process plug-in modules are registered through pluggy exactly as an entry
point's module is; the broken entry point is a real distribution on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from freezeframe import API_VERSION, hookimpl
from freezeframe.components import (
    ApplicationPlugin,
    Artifact,
    Backend,
    Deadline,
    Role,
    StageContext,
)
from freezeframe.errors import ConfigError, PluginError, ProfileError
from freezeframe.profile import load_profile
from freezeframe.registry import (
    Broken,
    Registry,
    build_registry,
    default_registry,
    normalized,
    owner_of,
)
from freezeframe_testing.plugin import make_counter_db, run_cli

RegistryWith = Callable[..., Registry]
INSTALLED = {"sqlite": "freezeframe-sqlite", "clone": "freezeframe-clone"}
INSTALLED["archive"] = "freezeframe-archive"


class EchoApp(ApplicationPlugin):
    """An application plug-in that holds nothing: enough to be registered."""

    kind = "ff-echo"

    def quiesce(self, deadline: Deadline) -> None:
        """Nothing to hold."""

    def unquiesce(self, snapshots: Sequence[Artifact]) -> None:
        """Nothing to release."""


class OtherEchoApp(EchoApp):
    """A second class claiming the same kind."""


class NullSnapshot(Backend):
    """A snapshot backend that makes nothing."""

    kind = "ff-null"
    role = Role.SNAPSHOT

    def run(self, context: StageContext) -> Artifact:
        """An empty artifact."""
        return Artifact(context.run_id)

    def restore(self, artifact: Artifact, target: Path) -> list[Path]:
        """Nothing to put back."""
        return []

    def verify(self, artifact: Artifact) -> None:
        """Nothing can be wrong with nothing."""

    def delete(self, artifact: Artifact) -> None:
        """Nothing to remove."""


class HalfBackend(Backend):
    """Implements only ``run``: the contract refuses it at registration."""

    kind = "ff-half"
    role = Role.COPY

    def run(self, context: StageContext) -> Artifact:
        """An empty artifact."""
        return Artifact(context.run_id)


class QuiesceOnlyApp(ApplicationPlugin):
    """Holds, but never lets go: the contract refuses it at registration."""

    kind = "ff-holder"

    def quiesce(self, deadline: Deadline) -> None:
        """Nothing to hold."""


class FutureApp(EchoApp):
    """Written for an API this core does not implement."""

    kind = "ff-future"
    api_version = 99


class NotAComponent:
    """Has a kind, but is no ApplicationPlugin."""

    kind = "ff-impostor"
    api_version = API_VERSION


class NoKindApp(EchoApp):
    """Forgot its kind name."""

    kind = ""


class NoModesApp(EchoApp):
    """Lists no capture mode at all."""

    kind = "ff-no-modes"
    capture_modes = ()


class NoRoleBackend(Backend):
    """Forgot its role."""

    kind = "ff-norole"


def plugin_module(
    name: str,
    *,
    applications: Sequence[Any] = (),
    backends: Sequence[Any] = (),
    raises: Exception | None = None,
) -> ModuleType:
    """An in-process plug-in module, as an entry point would load it."""
    module = ModuleType(name)

    @hookimpl
    def freezeframe_register_applications(register: Callable[[Any], None]) -> None:
        for cls in applications:
            register(cls)
        if raises is not None:
            raise raises

    @hookimpl
    def freezeframe_register_backends(register: Callable[[Any], None]) -> None:
        for cls in backends:
            register(cls)

    module.freezeframe_register_applications = freezeframe_register_applications  # type: ignore[attr-defined]
    module.freezeframe_register_backends = freezeframe_register_backends  # type: ignore[attr-defined]
    return module


def ours(registry: Registry) -> list[Broken]:
    """The broken entries of the plug-ins these tests made (other installed ones are not ours)."""
    return [
        b
        for b in registry.broken
        if "<ff_" in b.distribution or b.distribution.startswith("freezeframe-ff")
    ]


# -- the installed packages ------------------------------------------------------------


def test_installed_components_are_found_with_their_distribution(registry: Registry) -> None:
    # More packages may be installed next to these three; these three must be sound.
    assert [b for b in registry.broken if b.name in INSTALLED] == []
    assert "sqlite" in registry.applications
    assert {"archive", "clone"} <= set(registry.backends)
    for kind, dist in INSTALLED.items():
        info = registry.applications.get(kind) or registry.backends[kind]
        assert info.distribution == dist
        assert info.version == "0.1.0"
        assert info.cls.api_version == API_VERSION
    assert registry.backends["clone"].cls.role == Role.SNAPSHOT
    assert registry.backends["archive"].cls.role == Role.COPY
    assert registry.backend("clone").to_json()["role"] == "snapshot"
    assert "consistent_on" in registry.application("sqlite").to_json()


def test_default_registry_is_built_once() -> None:
    default_registry.cache_clear()
    try:
        first = default_registry()
        assert default_registry() is first
        assert build_registry() is not first
    finally:
        default_registry.cache_clear()


# -- in-process modules ------------------------------------------------------------------


def test_in_process_module_registers_classes(registry_with: RegistryWith) -> None:
    module = plugin_module("ff_good", applications=[EchoApp], backends=[NullSnapshot])
    registry = registry_with(module)
    assert ours(registry) == []
    echo = registry.application("ff-echo")
    assert (echo.kind, echo.category, echo.cls) == ("ff-echo", "application", EchoApp)
    assert echo.distribution == "<ff_good>"
    null = registry.backend("ff-null")
    assert (null.kind, null.category, null.cls) == ("ff-null", "backend", NullSnapshot)
    assert null.to_json()["snapshot_kind"] == "per-file"
    # The installed ones are still there next to it.
    assert {"sqlite", "ff-echo"} <= set(registry.applications)
    assert {"clone", "archive", "ff-null"} <= set(registry.backends)


def test_registry_without_entry_points_has_only_the_given_modules(
    registry_with: RegistryWith,
) -> None:
    registry = registry_with(plugin_module("ff_good", applications=[EchoApp]), entry_points=False)
    assert list(registry.applications) == ["ff-echo"]
    assert registry.backends == {}


def test_wrong_api_version_is_broken_naming_both_versions(registry_with: RegistryWith) -> None:
    registry = registry_with(plugin_module("ff_future", applications=[FutureApp, EchoApp]))
    assert "ff-future" not in registry.applications
    assert "ff-echo" in registry.applications  # the module's other class is fine
    (broken,) = ours(registry)
    assert (broken.name, broken.kind, broken.distribution) == (
        "FutureApp",
        "ff-future",
        "<ff_future>",
    )
    assert "plug-in API 99" in broken.error
    assert f"supports API {API_VERSION}" in broken.error
    with pytest.raises(PluginError, match=r"'ff-future' is broken \(<ff_future>\)"):
        registry.application("ff-future")


def test_two_modules_registering_one_kind_are_a_conflict_only_a_pin_resolves(
    registry_with: RegistryWith,
) -> None:
    registry = registry_with(
        plugin_module("ff_alpha", applications=[EchoApp]),
        plugin_module("ff_beta", applications=[OtherEchoApp]),
    )
    assert "ff-echo" not in registry.applications  # neither is named for the kind
    assert ours(registry) == []  # each class is sound: a conflict, not a broken plug-in
    (conflict,) = registry.conflicts
    assert (conflict.kind, conflict.category, conflict.unpinned) == ("ff-echo", "application", None)
    assert [c.distribution for c in conflict.candidates] == ["<ff_alpha>", "<ff_beta>"]
    with pytest.raises(PluginError) as info:
        registry.application("ff-echo")
    assert str(info.value) == (
        "application kind 'ff-echo' is registered by both <ff_alpha> and <ff_beta>; "
        'a profile must pin one to use it: pin with distribution = "<ff_alpha>" or '
        'distribution = "<ff_beta>" in the [[application]] table, '
        "or uninstall all but one of <ff_alpha>, <ff_beta>"
    )
    assert registry.application("ff-echo", "<ff_alpha>").cls is EchoApp
    assert registry.application("ff-echo", "<ff_beta>").cls is OtherEchoApp
    with pytest.raises(ConfigError, match=r"^field \"distribution\": '<ff_gamma>' does not "):
        registry.application("ff-echo", "<ff_gamma>")


def test_a_third_registration_of_a_conflicting_kind_does_not_win(
    registry_with: RegistryWith,
) -> None:
    registry = registry_with(
        plugin_module("ff_alpha", applications=[EchoApp]),
        plugin_module("ff_beta", applications=[EchoApp]),
        plugin_module("ff_gamma", applications=[OtherEchoApp]),
    )
    assert "ff-echo" not in registry.applications
    (conflict,) = registry.conflicts
    assert "registered by <ff_alpha>, <ff_beta> and <ff_gamma>" in conflict.problem()
    assert registry.application("ff-echo", "<ff_gamma>").cls is OtherEchoApp


def test_taking_an_installed_kind_leaves_the_distribution_named_for_it_in_use(
    registry_with: RegistryWith,
) -> None:
    class FakeSqlite(EchoApp):
        kind = "sqlite"

    registry = registry_with(plugin_module("ff_copycat", applications=[FakeSqlite]))
    assert ours(registry) == []
    (conflict,) = registry.conflicts
    assert conflict.problem() == (
        "application kind 'sqlite' is registered by both freezeframe-sqlite and <ff_copycat>; "
        "a profile that pins no distribution gets freezeframe-sqlite"
    )
    assert conflict.hint() == (
        'pin with distribution = "freezeframe-sqlite" or distribution = "<ff_copycat>" '
        "in the [[application]] table, or uninstall <ff_copycat>"
    )
    assert registry.application("sqlite").distribution == "freezeframe-sqlite"
    assert registry.application("sqlite", "Freezeframe_SQLite").distribution == (
        "freezeframe-sqlite"
    )  # compared as pip compares names
    assert registry.application("sqlite", "<ff_copycat>").cls is FakeSqlite


@pytest.mark.parametrize(
    ("kind", "distribution", "named"),
    [
        ("sqlite", "freezeframe-sqlite", True),
        ("sqlite", "freezeframe_SQLite", True),
        ("my_db", "freezeframe-my-db", True),
        ("sqlite", "freezeframe-sqlite-plus", False),
        ("sqlite", "acme-sqlite", False),
    ],
)
def test_the_distribution_named_for_a_kind(kind: str, distribution: str, named: bool) -> None:
    assert (normalized(distribution) == owner_of(kind)) is named


def test_registration_hook_that_raises_is_broken_and_others_still_load(
    registry_with: RegistryWith,
) -> None:
    registry = registry_with(
        plugin_module("ff_raiser", raises=RuntimeError("config of the plug-in is missing")),
        plugin_module("ff_good", applications=[EchoApp], backends=[NullSnapshot]),
    )
    (broken,) = ours(registry)
    assert broken.distribution == "<ff_raiser>"
    assert broken.error == "RuntimeError: config of the plug-in is missing"
    assert {"sqlite", "ff-echo"} <= set(registry.applications)
    assert {"clone", "archive", "ff-null"} <= set(registry.backends)


@pytest.mark.parametrize(
    ("applications", "backends", "name", "message"),
    [
        ([NotAComponent], [], "NotAComponent", "not a subclass of freezeframe.ApplicationPlugin"),
        ([NullSnapshot], [], "NullSnapshot", "not a subclass of freezeframe.ApplicationPlugin"),
        ([], [EchoApp], "EchoApp", "not a subclass of freezeframe.Backend"),
        (["sqlite"], [], "?", "not a subclass"),
        ([NoKindApp], [], "NoKindApp", "has no kind name"),
        ([NoModesApp], [], "NoModesApp", "capture_modes must be a non-empty tuple"),
        ([], [NoRoleBackend], "NoRoleBackend", "has no role"),
        (
            [],
            [HalfBackend],
            "HalfBackend",
            "HalfBackend: abstract methods not implemented: delete, restore, verify",
        ),
        (
            [QuiesceOnlyApp],
            [],
            "QuiesceOnlyApp",
            "QuiesceOnlyApp: abstract methods not implemented: unquiesce",
        ),
    ],
)
def test_class_that_is_not_a_valid_component_is_broken(
    registry_with: RegistryWith,
    applications: list[Any],
    backends: list[Any],
    name: str,
    message: str,
) -> None:
    registry = registry_with(
        plugin_module("ff_bad", applications=applications, backends=backends),
        entry_points=False,
    )
    assert registry.applications == {}
    assert registry.backends == {}
    (broken,) = ours(registry)
    assert broken.name == name
    assert broken.distribution == "<ff_bad>"
    assert message in broken.error


def test_misspelt_hook_is_broken_and_unregistered(registry_with: RegistryWith) -> None:
    typo = ModuleType("ff_typo")

    @hookimpl
    def freezeframe_register_backend(register: Callable[[Any], None]) -> None:
        register(NullSnapshot)

    typo.freezeframe_register_backend = freezeframe_register_backend  # type: ignore[attr-defined]
    registry = registry_with(typo, plugin_module("ff_good", applications=[EchoApp]))
    (broken,) = ours(registry)
    assert "ff_typo" in broken.name
    assert "freezeframe_register_backend" in broken.error
    assert not registry.pm.is_registered(typo)
    assert "ff-echo" in registry.applications


def test_every_plugin_with_a_misspelt_hook_is_reported(registry_with: RegistryWith) -> None:
    modules = []
    for name, hook in [
        ("ff_typo1", "freezeframe_register_backend"),
        ("ff_typo2", "freezeframe_run"),
    ]:
        module = ModuleType(name)

        def impl(register: Callable[[Any], None]) -> None:
            pass

        impl.__name__ = hook
        setattr(module, hook, hookimpl(impl))
        modules.append(module)
    registry = registry_with(*modules, entry_points=False)
    assert sorted(b.error.split("'")[1] for b in registry.broken) == [
        "freezeframe_register_backend",
        "freezeframe_run",
    ]


# -- the ways out: env vars -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "yes"])
def test_disable_autoload_loads_no_entry_point(
    monkeypatch: pytest.MonkeyPatch, registry_with: RegistryWith, value: str
) -> None:
    monkeypatch.setenv("FREEZEFRAME_DISABLE_PLUGIN_AUTOLOAD", value)
    registry = registry_with(plugin_module("ff_good", applications=[EchoApp]))
    assert list(registry.applications) == ["ff-echo"]  # in-process modules still count
    assert registry.backends == {}
    assert registry.origins == {}


def test_disable_autoload_zero_means_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREEZEFRAME_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert set(INSTALLED) <= set(build_registry().origins)


def test_plugins_allow_list_loads_only_the_named_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FREEZEFRAME_PLUGINS", "sqlite")
    registry = build_registry()
    assert list(registry.applications) == ["sqlite"]
    assert registry.backends == {}
    assert list(registry.origins) == ["sqlite"]
    monkeypatch.setenv("FREEZEFRAME_PLUGINS", " sqlite , clone ")
    registry = build_registry()
    assert list(registry.applications) == ["sqlite"]
    assert list(registry.backends) == ["clone"]


def test_unknown_kind_names_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FREEZEFRAME_PLUGINS", "clone")
    registry = build_registry()
    with pytest.raises(
        PluginError, match=r"unknown application plug-in 'sqlite' \(installed: none"
    ):
        registry.application("sqlite")
    with pytest.raises(PluginError, match=r"unknown backend 'tape' \(installed: clone\)"):
        registry.backend("tape")


# -- a real broken distribution ----------------------------------------------------------------

BROKEN_ERROR = "ImportError: needs libfrobnicate, which is not installed"


def install_distribution(site: Path, dist: str, entry_points: str, modules: dict[str, str]) -> None:
    """Lay out an installed distribution (dist-info with entry points, plus modules) in site."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[freezeframe]\n{entry_points}")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path holding an installed distribution whose plug-in fails to import."""
    site = tmp_path / "site"
    install_distribution(
        site,
        "freezeframe-ffbroken",
        "ffbroken = ff_broken_plugin\n",
        {"ff_broken_plugin": 'raise ImportError("needs libfrobnicate, which is not installed")\n'},
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_broken_entry_point_is_reported_and_the_rest_still_load(broken_site: Path) -> None:
    registry = build_registry()
    (broken,) = ours(registry)
    assert broken.name == "ffbroken"
    assert broken.distribution == "freezeframe-ffbroken"
    assert broken.error == BROKEN_ERROR
    assert "sqlite" in registry.applications
    assert {"archive", "clone"} <= set(registry.backends)
    with pytest.raises(PluginError) as info:
        registry.application("ffbroken")
    assert f"'ffbroken' is broken (freezeframe-ffbroken): {BROKEN_ERROR}" in str(info.value)


def test_every_way_an_entry_point_breaks_is_caught(broken_site: Path) -> None:
    install_distribution(
        broken_site,
        "freezeframe-ffmore",
        "ffsyntax = ff_syntax_plugin\nffattr = ff_fine_plugin:missing\nffraise = ff_raise_plugin\n",
        {
            "ff_syntax_plugin": "def broken(:\n",
            "ff_fine_plugin": "VALUE = 1\n",
            "ff_raise_plugin": "raise RuntimeError('no config')\n",
        },
    )
    registry = build_registry()
    errors = {b.name: b.error for b in ours(registry)}
    assert set(errors) == {"ffbroken", "ffsyntax", "ffattr", "ffraise"}
    assert errors["ffsyntax"].startswith("SyntaxError: ")
    assert errors["ffattr"].startswith("AttributeError: ")
    assert errors["ffraise"] == "RuntimeError: no config"
    assert {b.distribution for b in ours(registry) if b.name != "ffbroken"} == {
        "freezeframe-ffmore"
    }
    assert set(INSTALLED) <= set(registry.origins)


def test_broken_entry_point_is_skipped_by_the_allow_list(
    broken_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FREEZEFRAME_PLUGINS", "sqlite,clone,archive")
    registry = build_registry()
    assert registry.broken == []
    assert set(registry.origins) == set(INSTALLED)


def test_profile_using_the_broken_plugin_says_so(
    broken_site: Path, write_profile: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_profile(
        '[profile]\nname = "p"\n[[application]]\nplugin = "ffbroken"\nname = "x"\n'
        f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"\n'
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path, build_registry())
    (line,) = info.value.problems
    assert line.startswith(f"{path}: [[application]] 'x': field \"plugin\": ")
    assert "freezeframe-ffbroken" in line
    assert BROKEN_ERROR in line


def cli_env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_cli_plugins_lists_the_broken_plugin_and_exits_0(broken_site: Path) -> None:
    result = run_cli("plugins", "--json", env=cli_env(broken_site), timeout=60)
    assert result.returncode == 0, result.stderr
    data = result.json()
    assert [b for b in data["broken"] if b["name"] == "ffbroken"] == [
        {
            "name": "ffbroken",
            "distribution": "freezeframe-ffbroken",
            "kind": None,
            "error": BROKEN_ERROR,
        }
    ]
    components = {c["kind"]: c["distribution"] for c in data["components"]}
    assert INSTALLED.items() <= components.items()
    human = run_cli("plugins", env=cli_env(broken_site), timeout=60)
    assert human.returncode == 0, human.stderr
    assert "BROKEN ffbroken" in human.stdout
    assert BROKEN_ERROR in human.stdout


def test_cli_check_works_with_a_broken_plugin_installed(
    broken_site: Path, write_profile: Callable[..., Path], tmp_path: Path
) -> None:
    db = make_counter_db(tmp_path / "orders.db")
    path = write_profile(
        f"""
        [profile]
        name = "shop"

        [[application]]
        plugin = "sqlite"
        name = "orders"
        path = "{db}"

        [[backup]]
        backend = "clone"
        name = "snap"
        dir = "{tmp_path / "snaps"}"

        [[backup]]
        backend = "archive"
        name = "arch"
        dir = "{tmp_path / "archives"}"
        """
    )
    result = run_cli("check", path, "--json", env=cli_env(broken_site), timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"profile": "shop", "ok": True, "problems": []}
    # The same profile naming the broken plug-in fails with one line, not a traceback.
    path.write_text(path.read_text().replace('plugin = "sqlite"', 'plugin = "ffbroken"'))
    result = run_cli("check", path, env=cli_env(broken_site), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"is broken (freezeframe-ffbroken): {BROKEN_ERROR}" in result.stderr


# -- a real vendor distribution that takes a shipped kind ------------------------------------

HIJACKER = """
from freezeframe.plugin import ApplicationPlugin, hookimpl


class AcmeSqlite(ApplicationPlugin):
    kind = "sqlite"

    def __init__(self, name, table):
        super().__init__(name, table)
        self.path = table.get_path("path")

    def quiesce(self, deadline):
        pass

    def unquiesce(self, snapshots):
        pass


@hookimpl
def freezeframe_register_applications(register):
    register(AcmeSqlite)
"""


@pytest.fixture
def hijack_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path holding an installed vendor distribution that registers ``sqlite``."""
    site = tmp_path / "site"
    install_distribution(
        site, "acme-sqlite", "acmesqlite = ff_acme_sqlite\n", {"ff_acme_sqlite": HIJACKER}
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def sqlite_profile(write_profile: Callable[..., Path], tmp_path: Path, pin: str = "") -> Path:
    """A profile of one SQLite database and a clone stage; ``pin`` is more of the application."""
    db = make_counter_db(tmp_path / "shop.db")
    return write_profile(
        f'[profile]\nname = "p"\n[[application]]\nplugin = "sqlite"\nname = "shop"\n'
        f'path = "{db}"\n{pin}'
        f'[[backup]]\nbackend = "clone"\nname = "snap"\ndir = "{tmp_path / "snaps"}"\n'
    )


def test_an_unrelated_install_does_not_take_a_shipped_kind(
    hijack_site: Path, write_profile: Callable[..., Path], tmp_path: Path
) -> None:
    registry = build_registry()
    (conflict,) = registry.conflicts
    assert [c.distribution for c in conflict.candidates] == ["freezeframe-sqlite", "acme-sqlite"]
    assert conflict.unpinned is not None
    assert conflict.unpinned.distribution == "freezeframe-sqlite"
    profile = load_profile(sqlite_profile(write_profile, tmp_path), registry)
    assert type(profile.applications[0].component).__module__ == "freezeframe_sqlite"


def test_a_profile_pins_the_vendors_class(
    hijack_site: Path, write_profile: Callable[..., Path], tmp_path: Path
) -> None:
    path = sqlite_profile(write_profile, tmp_path, 'distribution = "acme-sqlite"\n')
    (app,) = load_profile(path, build_registry()).applications
    assert type(app.component).__name__ == "AcmeSqlite"
    assert app.info.distribution == "acme-sqlite"


def test_a_pin_the_kind_does_not_come_from_is_one_line(
    hijack_site: Path, write_profile: Callable[..., Path], tmp_path: Path
) -> None:
    path = sqlite_profile(write_profile, tmp_path, 'distribution = "freezeframe-redis"\n')
    with pytest.raises(ProfileError) as info:
        load_profile(path, build_registry())
    assert info.value.problems == [
        f"{path}: [[application]] 'shop': field \"distribution\": 'freezeframe-redis' does not "
        "provide application plug-in 'sqlite' (provided by freezeframe-sqlite, acme-sqlite)"
    ]


def test_cli_plugins_shows_the_conflict_and_how_to_resolve_it(hijack_site: Path) -> None:
    result = run_cli("plugins", "--json", env=cli_env(hijack_site), timeout=60)
    assert result.returncode == 1, result.stderr
    (conflict,) = result.json()["conflicts"]
    assert conflict["distributions"] == ["freezeframe-sqlite", "acme-sqlite"]
    assert conflict["unpinned"] == "freezeframe-sqlite"
    human = run_cli("plugins", env=cli_env(hijack_site), timeout=60)
    assert human.returncode == 1
    assert "CONFLICT sqlite" in human.stdout
    assert "a profile that pins no distribution gets freezeframe-sqlite" in human.stdout
    assert "or uninstall acme-sqlite" in human.stdout
