"""The command line an operator expects: --version, backup --all over the default profile
places, shell completion, progress totals, what restore --verify and a bad profile say,
and plan's steps numbered once. Real commands, real shells, real components."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from freezeframe.engine import Engine
from freezeframe.profile import load_profile
from freezeframe.profiles import default_profiles, user_dir
from freezeframe.registry import Registry
from freezeframe_testing.plugin import (
    make_counter_db,
    require_tool,
    run_cli,
    sqlite_clone_profile,
)

ARCHIVE = """
[[backup]]
backend = "archive"
name = "archive"
dir = "{dir}"
"""


def shop(tmp_path: Path, name: str = "shop", then: str = "") -> Path:
    """A profile ``name`` in its own folder: the SQLite database ``shop`` (captured in the
    snapshot), a clone stage ``snap``, an archive stage ``archive``, then ``then``."""
    folder = tmp_path / name
    folder.mkdir()
    db = make_counter_db(folder / "shop.db")
    archive = ARCHIVE.format(dir=folder / "archives")
    return sqlite_clone_profile(folder, db, name=name, capture="snapshot", then=archive + then)


# -- --version -----------------------------------------------------------------------------


def test_version_names_the_core_and_with_json_every_installed_distribution() -> None:
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"freezeframe {md.version('freezeframe')}\n"
    r = run_cli("--version", "--json")
    found = {d["name"]: d["version"] for d in r.json()["distributions"]}
    assert r.json()["freezeframe"] == md.version("freezeframe")
    for name in ("freezeframe", "freezeframe-sqlite", "freezeframe-clone", "freezeframe-restic"):
        assert found[name] == md.version(name)
    r = run_cli()  # still: a verb is needed when --version is not given
    assert r.returncode == 2 and "required: VERB" in r.stderr


# -- backup --all --------------------------------------------------------------------------


def test_default_profiles_are_the_systems_then_the_users_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system, config = tmp_path / "etc", tmp_path / "config"
    (system).mkdir()
    (config / "freezeframe").mkdir(parents=True)
    for path in (system / "b.toml", system / "a.toml", config / "freezeframe" / "c.toml"):
        path.write_text("")
    (system / "notes.txt").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    assert default_profiles((system, user_dir())) == [
        system / "a.toml",
        system / "b.toml",
        config / "freezeframe" / "c.toml",
    ]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # the user's dir is the system's
    (tmp_path / "freezeframe").symlink_to(system)
    assert default_profiles((system, user_dir())) == [system / "a.toml", system / "b.toml"]
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the spec: absolute only
    monkeypatch.setenv("HOME", str(config.parent / "home"))
    (config.parent / "home" / ".config").mkdir(parents=True)
    (config.parent / "home" / ".config" / "freezeframe").symlink_to(config / "freezeframe")
    assert (
        default_profiles((system, user_dir()))[-1] == tmp_path / "home/.config/freezeframe/c.toml"
    )


def test_backup_all_backs_up_every_profile_and_exits_with_the_worst(
    tmp_path: Path,
) -> None:
    assert not Path("/etc/freezeframe").exists(), "this machine has system profiles"
    folder = tmp_path / "config" / "freezeframe"
    folder.mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    for name in ("a", "b"):
        shop(tmp_path, name).rename(folder / f"{name}.toml")
    (folder / "c.toml").write_text('[profile]\nname = "c"\n')  # no stage: exit 2

    r = run_cli("backup", "--all", "--json", env=env)
    assert r.returncode == 2, r.stderr
    results = r.json()["profiles"]
    assert [(p["profile"], p["exit_code"]) for p in results] == [
        (str(folder / "a.toml"), 0),
        (str(folder / "b.toml"), 0),
        (str(folder / "c.toml"), 2),
    ]
    assert [p["result"].get("status") for p in results[:2]] == ["succeeded"] * 2
    assert "no [[backup]] stage" in results[2]["result"]["error"]
    assert r.json()["exit_code"] == 2
    for name in ("a", "b"):  # each was backed up for real
        listed = run_cli("list", folder / f"{name}.toml", "--json").json()
        assert [run["status"] for run in listed] == ["succeeded"]

    (folder / "c.toml").unlink()
    r = run_cli("backup", "--all", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" succeeded in ") == 2
    assert f"profile {folder / 'a.toml'}:" in r.stdout

    r = run_cli("backup", "--all", folder / "a.toml", env=env)
    assert r.returncode == 2 and "not both" in r.stderr
    r = run_cli("backup", env=env)
    assert r.returncode == 2 and "--all" in r.stderr
    r = run_cli("backup", "--all", env={"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"freezeframe: error: backup --all: no profile (*.toml) in /etc/freezeframe, "
        f"{tmp_path / 'none' / 'freezeframe'}"
    ]


# -- shell completion ----------------------------------------------------------------------


def verbs_of_help() -> list[str]:
    return re.findall(r"^ {4}([a-z]+) {2,}\S", run_cli("--help").stdout, re.MULTILINE)


@pytest.fixture
def completing(tmp_path: Path) -> Path:
    """A folder to complete in: a profile, another file and a folder."""
    (tmp_path / "shop.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "restored").mkdir()
    return tmp_path


def bash_complete(script: Path, cwd: Path, *words: str) -> list[str]:
    """What bash completes the last of ``words`` to, with ``script`` sourced."""
    line = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {script} && complete -p freezeframe >&2 && COMP_WORDS=(freezeframe {line}) "
        f'&& COMP_CWORD={len(words)} && _freezeframe && printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    r = subprocess.run(
        ["bash", "--norc", "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("complete -o filenames -F _freezeframe freezeframe")
    return sorted(r.stdout.split())


def test_bash_completion_is_written_from_the_parser(completing: Path) -> None:
    script = completing / "freezeframe.bash"
    r = run_cli("completion", "bash")
    assert r.returncode == 0, r.stderr
    script.write_text(r.stdout)
    assert subprocess.run(["bash", "-n", script], timeout=30).returncode == 0
    verbs = verbs_of_help()
    assert "completion" in verbs
    assert set(verbs) <= set(bash_complete(script, completing, ""))
    assert bash_complete(script, completing, "ba") == ["backup"]
    assert bash_complete(script, completing, "--json", "re") == ["restore"]
    assert bash_complete(script, completing, "backup", "") == ["restored", "shop.toml"]
    assert "--all" in bash_complete(script, completing, "backup", "--")
    assert bash_complete(script, completing, "restore", "--st") == ["--stage"]
    to = bash_complete(script, completing, "restore", "shop.toml", "latest", "--to", "")
    assert to == ["restored"]
    assert bash_complete(script, completing, "restore", "--stage", "x", "") == [
        "restored",
        "shop.toml",
    ]  # the option's value is not the profile: the profile comes next
    assert bash_complete(script, completing, "restore", "shop.toml", "") == []  # a run id
    assert bash_complete(script, completing, "completion", "") == ["bash", "fish", "zsh"]


#: Completes the line ``$2`` in an interactive zsh with the script ``$1`` loaded, printing
#: each word completion offered (after ``WORDS:``), then ``END-OF-COMPLETION``.
ZSH_CAPTURE = r"""
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z 'PROMPT= ; RPROMPT='
zpty -w z "autoload -U compinit; compinit -u -D; source ${(q)1}"
zpty -w z '_ff_done(){ compstate[insert]=""; compstate[list]=""
    print -r -- END-OF-COMPLETION >&2 }'
zpty -w z 'comppostfuncs=(_ff_done)'
zpty -w z 'compadd(){ local -a a; builtin compadd -O a "$@"
    print -r -l -- WORDS: $a >&2; builtin compadd "$@" }'
zpty -w z 'exec 2>&1'
zpty -w z "print ready-marker"
zpty -r z line '*ready-marker*'
zpty -r z line '*ready-marker*'
zpty -w -n z "$2"$'\t'
out=""
for i in {1..400}; do
  if zpty -r -t z chunk; then out+=$chunk; [[ $out == *END-OF-COMPLETION* ]] && break
  else sleep 0.05; fi
done
print -r -- "$out"
zpty -d z
"""


def zsh_complete(script: Path, cwd: Path, line: str) -> set[str]:
    r = subprocess.run(
        ["zsh", "-f", "-c", ZSH_CAPTURE, "capture", str(script), line],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = r.stdout.replace("\r", "")
    assert "END-OF-COMPLETION" in text, text
    words = text.split("WORDS:", 1)[-1].split("END-OF-COMPLETION")[0]
    return {w.strip() for w in words.splitlines() if w.strip() and w.strip() != "WORDS:"}


def test_zsh_completion_parses_registers_and_completes(completing: Path) -> None:
    zsh = require_tool("zsh")
    script = completing / "_freezeframe"
    script.write_text(run_cli("completion", "zsh").stdout)
    assert subprocess.run([zsh, "-n", script], timeout=30).returncode == 0
    probe = (
        f"autoload -U compinit; compinit -u -D; source {script}; print -r -- $_comps[freezeframe]"
    )
    r = subprocess.run([zsh, "-f", "-c", probe], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "_freezeframe", r.stderr
    assert set(verbs_of_help()) <= zsh_complete(script, completing, "freezeframe ")
    assert zsh_complete(script, completing, "freezeframe restore --t") == {"--to"}
    assert zsh_complete(script, completing, "freezeframe completion ") == {"bash", "zsh", "fish"}
    assert "restored" in zsh_complete(script, completing, "freezeframe restore x latest --to ")


def test_fish_completion_parses_and_completes(completing: Path) -> None:
    fish = require_tool("fish")
    script = completing / "freezeframe.fish"
    script.write_text(run_cli("completion", "fish").stdout)
    assert subprocess.run([fish, "--no-execute", script], timeout=30).returncode == 0

    def complete(line: str) -> set[str]:
        r = subprocess.run(
            [fish, "--no-config", "-c", f"source {script}; complete -C '{line}'"],
            cwd=completing,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return {w.split("\t")[0] for w in r.stdout.splitlines()}

    assert set(verbs_of_help()) <= complete("freezeframe ")
    assert complete("freezeframe ba") == {"backup"}
    assert "--all" in complete("freezeframe backup --")
    assert {"shop.toml", "restored/"} <= complete("freezeframe backup ")
    assert "notes.txt" not in complete("freezeframe backup ")
    assert complete("freezeframe completion ") == {"bash", "zsh", "fish"}


# -- progress ------------------------------------------------------------------------------


def test_a_copy_stage_shows_its_total_from_the_start(tmp_path: Path, registry: Registry) -> None:
    """The bar of a copy stage has a total before the stage has copied a byte: the size of
    the snapshot it reads (not ``0/?`` until it ends)."""
    profile = shop(tmp_path)
    seen: dict[str, list[tuple[int, int, int | None]]] = {}

    def factory(stage: str):  # type: ignore[no-untyped-def]
        calls = seen.setdefault(stage, [])
        return lambda done, files, total: calls.append((done, files, total))

    engine = Engine(load_profile(profile, registry), registry)
    run = engine.backup(progress=factory).record
    snap = run.stage("snap")
    assert snap is not None and snap.artifact is not None and snap.artifact.bytes > 0
    archive = run.stage("archive")
    assert archive is not None and archive.artifact is not None
    assert seen["archive"][0] == (0, 0, snap.artifact.bytes)
    assert {total for _, _, total in seen["archive"][:-1]} == {snap.artifact.bytes}
    # done: the whole is what it read (not the compressed archive's size)
    read = seen["archive"][-2][0]
    assert read == snap.artifact.bytes and seen["archive"][-1] == (read, 1, read)
    assert seen["snap"][0] == (0, 0, None)  # a snapshot stage: nothing to read it from
    assert seen["snap"][-1] == (snap.artifact.bytes, snap.artifact.files, snap.artifact.bytes)


def test_on_a_terminal_log_lines_and_bars_go_to_stderr_and_stdout_holds_the_result(
    tmp_path: Path,
) -> None:
    """With stderr a terminal, rich draws the log and the bars there: never into stdout,
    where ``--json`` or a redirect wants the result alone."""
    profile = shop(tmp_path)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "freezeframe", "backup", str(profile), "--json"],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
        )
    finally:
        os.close(slave)
    terminal = b""
    with contextlib.suppress(OSError):  # EIO once everything written was read
        while chunk := os.read(master, 65536):
            terminal += chunk
    os.close(master)
    assert proc.returncode == 0, terminal
    assert json.loads(proc.stdout)["status"] == "succeeded"
    assert b"of profile shop started" in terminal


# -- what a command says -------------------------------------------------------------------


def test_restore_verify_says_in_words_that_the_verify_passed(tmp_path: Path) -> None:
    profile = shop(tmp_path)
    assert run_cli("backup", profile).returncode == 0
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "one", "--verify")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        "verify passed: shop: the restored data passed its plug-in's check"
    )
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "two", "--json", "--verify")
    assert r.json()["verified"] is True and r.json()["verified_applications"] == ["shop"]
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "three")
    assert "verify passed" not in r.stdout and "not verified" not in r.stdout
    r = run_cli("restore", profile, "latest", "--to", tmp_path / "four", "--json")
    assert r.json()["verified"] is False and r.json()["verified_applications"] == []


SEVERAL = """
    [profile]
    name = "x"
    state_dir = "{state}"

    [[backup]]
    backend = "tape"
    name = "s"

    [[backup]]
    backend = "clone"
    name = "t"
    colour = 1
"""


@pytest.mark.parametrize("verb", ["check", "backup"])
def test_several_profile_problems_are_one_per_line(
    tmp_path: Path, write_profile, verb: str
) -> None:
    profile = write_profile(SEVERAL.format(state=tmp_path / "st"))
    r = run_cli(verb, profile)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        f"freezeframe: error: {profile}: [[backup]] 's': field \"backend\": unknown backend 'tape'"
    )
    assert (
        lines[1]
        == f"freezeframe: error: {profile}: [[backup]] 't': field \"dir\": missing (required)"
    )
    assert "more:" not in r.stderr
    r = run_cli(verb, profile, "--json")
    assert r.json()["errors"] == [line.removeprefix("freezeframe: error: ") for line in lines]
    assert r.json()["error"] == r.json()["errors"][0] and r.json()["exit_code"] == 2
    assert not (tmp_path / "st").exists()


def test_a_missing_field_and_its_misspelling_are_one_line(tmp_path: Path) -> None:
    restic = '[[backup]]\nbackend = "restic"\nname = "off"\nrepo = "/srv/restic"\n'
    profile = shop(tmp_path, then=restic + 'password_env = "HOME"\n')
    r = run_cli("check", profile)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"freezeframe: error: {profile}: [[backup]] 'off': field \"repository\": missing "
        '(required; or "repository_env"/"repository_file"); unknown field "repo": '
        'did you mean "repository"?'
    ]


def test_plan_numbers_each_step_once_and_shows_crash_safety(tmp_path: Path) -> None:
    ledger = make_counter_db(tmp_path / "ledger.db")
    profile = shop(
        tmp_path,
        then=f"""
[[application]]
plugin = "sqlite"
name = "ledger"
path = "{ledger}"
after = ["shop"]
capture = "snapshot"

[[backup]]
backend = "archive"
name = "second"
dir = "{tmp_path}/more"
keep = {{ last = 2 }}
""",
    )
    r = run_cli("plan", profile)
    assert r.returncode == 0, r.stderr
    numbers = [int(m) for m in re.findall(r"^(\d+)\.", r.stdout, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)), r.stdout
    assert not re.search(r"^\d+\.\d|^\d+[a-z]\.", r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"^\d+\. quiesce in parallel: shop$", r.stdout, re.MULTILINE)
    assert re.search(
        r"^\d+\. once those are quiesced, quiesce in parallel: ledger$", r.stdout, re.MULTILINE
    )
    for app in ("shop", "ledger"):
        assert (
            f"     {app} (sqlite): capture snapshot; crash safety process-exit (if freezeframe "
            "dies, its lock or connection goes and the quiesce ends)"
        ) in r.stdout.splitlines(), r.stdout
    steps = [line.split(". ", 1)[1] for line in r.stdout.splitlines() if re.match(r"\d+\. ", line)]
    assert steps.index("unquiesce every application (reverse order)") < steps.index(
        "stage archive (archive) from the view of snap"
    )
    assert "retention of second: keep last = 2" in steps
