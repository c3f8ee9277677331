"""The docs match the code: generated reference pages, CLI help, README commands and links."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rayrec.cli import DEFAULT_CONFIG, build_parser
from rayrec.config import FIELD_DOCS, config_fields, load_config
from rayrec.docs import DOCS_DIR, format_help, generated_pages, walk_parsers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARKDOWN_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("name", sorted(generated_pages()))
def test_generated_page_is_current(name):
    committed = (DOCS_DIR / name).read_text() if (DOCS_DIR / name).exists() else ""

    assert committed == generated_pages()[name](), f"docs/{name} is stale: run `python -m rayrec.docs` and commit it"


def test_every_config_key_documented():
    keys = {key for key, _, _ in config_fields()}

    assert sorted(keys - set(FIELD_DOCS)) == [], "add a description to FIELD_DOCS in rayrec/config.py"
    assert sorted(set(FIELD_DOCS) - keys) == [], "FIELD_DOCS describes keys that no config class has"


def _options():
    for path, parser in walk_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            yield path, action


def test_every_option_has_help():
    missing = [f"{path} {action.dest}" for path, action in _options() if not (action.help or "").strip()]

    assert missing == []


def test_option_help_states_default():
    # An option with a real default must state it, because None and False defaults mean "not set" and "off".
    unstated = []
    for path, action in _options():
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            continue
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        if f"default: {default}" not in action.help:
            unstated.append(f"{path} {action.option_strings or action.dest}: {action.help!r}")

    assert unstated == []


def test_cli_page_shows_each_command_help():
    page = (DOCS_DIR / "cli.md").read_text()

    for path, parser in walk_parsers(build_parser()):
        assert f"## `{path}`\n\n```text\n{format_help(parser).rstrip()}\n```" in page, path


def _bash_commands(markdown: str) -> list[str]:
    """The commands in a page's ```bash blocks, with continuations joined and comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _rayrec_arguments(command: str) -> list[str] | None:
    """The `rayrec` arguments of a shell command line, including `python jobs/X.py` entry points."""
    for part in re.split(r"\s*(?:&&|\|\||;)\s*", command):
        words = shlex.split(part)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # leading VARIABLE=value assignments
        if words[:1] == ["rayrec"]:
            return words[1:]
        if "--" in words and words[:3] == ["ray", "job", "submit"]:
            entry = words[words.index("--") + 1:]
            match = re.fullmatch(r"jobs/(prepare|train|evaluate|batch_recommend)\.py", entry[1]) if len(entry) > 1 else None
            if entry[:1] == ["python"] and match:
                return [match.group(1).replace("_", "-"), *entry[2:]]
    return None


def _quoted_repo_files(command: str) -> list[str]:
    """Paths in a command that name files shipped in this repository (configs, jobs, serve configs)."""
    return [word for word in shlex.split(command) if re.fullmatch(r"(configs|serve_configs|jobs|benchmarks)/[\w./-]+", word)]


@pytest.mark.parametrize("page", MARKDOWN_FILES, ids=lambda path: path.name)
def test_documented_commands_parse(page):
    commands = [command for command in _bash_commands(page.read_text()) if _rayrec_arguments(command) is not None]
    parser = build_parser()

    for command in commands:
        try:
            args = parser.parse_args(_rayrec_arguments(command))
        except SystemExit:
            pytest.fail(f"{page.name}: `{command}` does not parse with the rayrec parser")
        if hasattr(args, "overrides"):
            # The config keys a documented command overrides must exist and take the value shown.
            load_config(REPO / (args.config or DEFAULT_CONFIG), args.overrides)


@pytest.mark.parametrize("page", MARKDOWN_FILES, ids=lambda path: path.name)
def test_documented_files_exist(page):
    for command in _bash_commands(page.read_text()):
        for path in _quoted_repo_files(command):
            assert (REPO / path).exists(), f"{page.name}: `{command}` names {path}, which does not exist"


@pytest.mark.parametrize("page", MARKDOWN_FILES, ids=lambda path: path.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_readme_mentions_main_commands():
    commands = {args[0] for args in map(_rayrec_arguments, _bash_commands((REPO / "README.md").read_text())) if args}

    assert {"quickstart", "train", "serve", "doctor"} <= commands


# README commands that need neither Ray nor a trained bundle, so the test runs them for real.
CHEAP_COMMANDS = {("datasets", "list"): 0, ("doctor",): None}


def test_cheap_readme_commands_run():
    readme = [args for args in map(_rayrec_arguments, _bash_commands((REPO / "README.md").read_text())) if args]
    cheap = [args for args in readme if any(tuple(args[:len(key)]) == key for key in CHEAP_COMMANDS)]

    assert len({tuple(args[:2]) for args in cheap}) >= 2, "README.md should show `rayrec datasets list` and `rayrec doctor`"
    for args in cheap:
        result = subprocess.run([str(BIN / "rayrec"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        if args[0] == "doctor":
            # Exit status 1 only means this machine lacks something, and the output then names it.
            assert "train resources:" in result.stdout, result.stderr[-2000:]
        else:
            assert result.returncode == 0, result.stderr[-2000:]
            assert result.stdout.strip()
