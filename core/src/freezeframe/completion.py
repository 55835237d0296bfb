"""Shell completion for ``freezeframe``: bash, zsh and fish scripts written from the
command's own argparse parser (``freezeframe completion SHELL``), so a verb or an option
added to the parser is completed without anyone editing a script.

What a word completes to comes from the parser: a verb's options (and whether each takes
a value), its positionals in order, and ``choices`` where given. A profile (a positional
or option of type :class:`~pathlib.Path` named ``profile``) completes to ``*.toml`` files,
``--to``'s DIR to directories, any other path to files.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHELLS", "script"]

SHELLS = ("bash", "zsh", "fish")

#: What a value completes to: ``profile`` (a ``*.toml`` file), ``dir``, ``file``, or
#: ``none`` (a run id, a name: nothing to offer); ``choices`` when the parser has them.
Kind = str


@dataclass(frozen=True)
class _Option:
    flags: tuple[str, ...]
    help: str
    takes_value: bool
    kind: Kind
    choices: tuple[str, ...]
    repeatable: bool


@dataclass(frozen=True)
class _Positional:
    name: str
    help: str
    kind: Kind
    choices: tuple[str, ...]
    optional: bool


@dataclass(frozen=True)
class _Verb:
    name: str
    help: str
    options: tuple[_Option, ...]
    positionals: tuple[_Positional, ...]


def _kind(action: argparse.Action) -> Kind:
    if action.type is not Path:
        return "none"
    if action.dest == "profile":
        return "profile"
    return "dir" if action.metavar == "DIR" else "file"


def _options(parser: argparse.ArgumentParser) -> tuple[_Option, ...]:
    found = []
    for a in parser._actions:
        if not a.option_strings:
            continue
        found.append(
            _Option(
                tuple(a.option_strings),
                a.help if isinstance(a.help, str) and a.help != argparse.SUPPRESS else "",
                a.nargs != 0,
                _kind(a),
                tuple(str(c) for c in a.choices or ()),
                isinstance(a, argparse._AppendAction),
            )
        )
    return tuple(found)


def _model(parser: argparse.ArgumentParser) -> tuple[tuple[_Option, ...], tuple[_Verb, ...]]:
    """The command's own options, and each verb with its options and positionals."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    verbs = []
    for name, sp in sub.choices.items():
        positionals = tuple(
            _Positional(
                a.dest,
                str(a.help or ""),
                _kind(a),
                tuple(str(c) for c in a.choices or ()),
                a.nargs in ("?", "*"),
            )
            for a in sp._actions
            if not a.option_strings
        )
        verbs.append(_Verb(name, str(helps.get(name, "")), _options(sp), positionals))
    return _options(parser), tuple(verbs)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser``'s command for ``shell`` (one of :data:`SHELLS`)."""
    options, verbs = _model(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](parser.prog, options, verbs)


# -- bash ------------------------------------------------------------------------------
def _words(items: Iterable[str]) -> str:
    return " ".join(items)


def _bash(prog: str, options: tuple[_Option, ...], verbs: tuple[_Verb, ...]) -> str:
    fn = f"_{prog.replace('-', '_')}"
    cases = []
    for v in verbs:
        opts = [f for o in v.options for f in o.flags]
        takes = [f for o in v.options if o.takes_value for f in o.flags]
        dirs = [f for o in v.options if o.kind == "dir" for f in o.flags]
        files = [f for o in v.options if o.kind in ("file", "profile") for f in o.flags]
        pos = [f"c:{','.join(p.choices)}" if p.choices else p.kind for p in v.positionals]
        cases.append(
            f'        {v.name}) opts="{_words(opts)}"; takes=" {_words(takes)} "; '
            f'dirs=" {_words(dirs)} "; files=" {_words(files)} "; pos="{_words(pos)}" ;;'
        )
    top = [f for o in options for f in o.flags] + [v.name for v in verbs]
    return f"""# bash completion for {prog} (written by `{prog} completion bash`)
{fn}() {{
    local cur prev verb="" at=0 i n=0 skip="" opts="" takes="" dirs="" files="" pos=""
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) verb="${{COMP_WORDS[i]}}"; at=$i; break ;;
        esac
    done
    if [[ -z "$verb" ]]; then
        COMPREPLY=($(compgen -W "{_words(top)}" -- "$cur"))
        return 0
    fi
    case "$verb" in
{chr(10).join(cases)}
        *) return 0 ;;
    esac
    if [[ "$takes" == *" $prev "* && "$prev" == -* ]]; then
        if [[ "$dirs" == *" $prev "* ]]; then
            COMPREPLY=($(compgen -d -- "$cur"))
        elif [[ "$files" == *" $prev "* ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        fi
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return 0
    fi
    for ((i = at + 1; i < COMP_CWORD; i++)); do
        if [[ -n "$skip" ]]; then skip=""; continue; fi
        case "${{COMP_WORDS[i]}}" in
            --*=*) ;;
            -*) if [[ "$takes" == *" ${{COMP_WORDS[i]}} "* ]]; then skip=1; fi ;;
            *) n=$((n + 1)) ;;
        esac
    done
    local kinds=($pos)
    local kind="${{kinds[n]:-}}"
    case "$kind" in
        profile) COMPREPLY=($(compgen -f -X '!*.toml' -- "$cur") $(compgen -d -- "$cur")) ;;
        dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
        file) COMPREPLY=($(compgen -f -- "$cur")) ;;
        c:*) kind="${{kind#c:}}"; COMPREPLY=($(compgen -W "${{kind//,/ }}" -- "$cur")) ;;
    esac
    return 0
}}
complete -o filenames -F {fn} {prog}
"""


# -- zsh -------------------------------------------------------------------------------
def _zq(text: str) -> str:
    """``text`` inside single quotes, for zsh."""
    return text.replace("'", "'\\''")


def _zdesc(text: str) -> str:
    """A description inside an ``_arguments`` spec's ``[...]``."""
    return _zq(text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]"))


def _zaction(kind: Kind, choices: tuple[str, ...]) -> str:
    if choices:
        return f"({' '.join(choices)})"
    return {
        "profile": "_files -g '\\''*.toml'\\''",
        "dir": "_files -/",
        "file": "_files",
    }.get(kind, " ")


def _zspecs(options: tuple[_Option, ...]) -> list[str]:
    specs = []
    for o in options:
        value = f":{o.flags[-1].lstrip('-')}:{_zaction(o.kind, o.choices)}" if o.takes_value else ""
        desc = f"[{_zdesc(o.help)}]"
        star = "*" if o.repeatable else ""
        if len(o.flags) > 1:
            group = " ".join(o.flags)
            specs.append(f"'({group})'{{{','.join(o.flags)}}}'{star}{desc}{value}'")
        else:
            specs.append(f"'{star}{o.flags[0]}{desc}{value}'")
    return specs


def _zsh(prog: str, options: tuple[_Option, ...], verbs: tuple[_Verb, ...]) -> str:
    fn = f"_{prog.replace('-', '_')}"
    described = "\n".join(
        f"        '{_zq(v.name)}:{_zq(v.help.replace(':', chr(92) + ':'))}'" for v in verbs
    )
    cases = []
    for v in verbs:
        specs = _zspecs(v.options) + [
            f"'{'::' if p.optional else ':'}{_zq(p.name)}:{_zaction(p.kind, p.choices)}'"
            for p in v.positionals
        ]
        body = " \\\n                ".join(["_arguments -s", *specs])
        cases.append(f"            {v.name})\n                {body} ;;")
    top = " \\\n        ".join(
        ["_arguments -C", *_zspecs(options), "'1: :->verb'", "'*:: :->args'"]
    )
    return f"""#compdef {prog}
# zsh completion for {prog} (written by `{prog} completion zsh`)
{fn}() {{
    local curcontext="$curcontext" state line ret=1
    typeset -A opt_args
    local -a verbs
    verbs=(
{described}
    )
    {top} && ret=0
    case $state in
        verb)
            _describe -t verbs '{prog} verb' verbs && ret=0 ;;
        args)
            curcontext="${{curcontext%:*:*}}:{prog}-$words[1]:"
            case $words[1] in
{chr(10).join(cases)}
            esac ;;
    esac
    return ret
}}
if [[ "${{zsh_eval_context[-1]}}" == loadautofunc ]]; then
    {fn} "$@"
else
    compdef {fn} {prog}
fi
"""


# -- fish ------------------------------------------------------------------------------
def _fq(text: str) -> str:
    """``text`` in single quotes, for fish."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(prog: str, cond: str, o: _Option) -> str:
    parts = [f"complete -c {prog}", f"-n {_fq(cond)}"]
    for f in o.flags:
        parts.append(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}")
    if o.takes_value:
        parts.append("-r")
        if o.choices:
            parts.append(f"-f -a {_fq(' '.join(o.choices))}")
        elif o.kind == "dir":
            parts.append("-f -a '(__fish_complete_directories)'")
        elif o.kind == "none":
            parts.append("-f")
        else:
            parts.append("-F")
    if o.help:
        parts.append(f"-d {_fq(o.help)}")
    return " ".join(parts)


def _fish(prog: str, options: tuple[_Option, ...], verbs: tuple[_Verb, ...]) -> str:
    lines = [
        f"# fish completion for {prog} (written by `{prog} completion fish`)",
        f"complete -c {prog} -f",
    ]
    top = "__fish_use_subcommand"
    lines += [_fish_option(prog, top, o) for o in options]
    lines += [f"complete -c {prog} -n {top} -a {v.name} -d {_fq(v.help)}" for v in verbs]
    for v in verbs:
        cond = f"__fish_seen_subcommand_from {v.name}"
        lines += [_fish_option(prog, cond, o) for o in v.options]
        # fish has no notion of a positional's place: offer each kind the verb takes
        for p in v.positionals:
            if p.choices:
                action = f"-a {_fq(' '.join(p.choices))}"
            elif p.kind == "profile":  # *.toml files and folders, nothing else
                action = "-a '(set -l t (commandline -ct); for f in $t*.toml $t*/; echo $f; end)'"
            elif p.kind in ("file", "dir"):
                action = "-F"
            else:
                continue
            lines.append(f"complete -c {prog} -n {_fq(cond)} {action} -d {_fq(p.help)}")
    return "\n".join(lines) + "\n"
