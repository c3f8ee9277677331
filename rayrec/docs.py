"""Generate the reference pages in docs/ from the code, so they cannot drift from it.

    python -m rayrec.docs            # rewrite docs/cli.md, docs/configuration.md, docs/api.md, docs/openapi.json
    python -m rayrec.docs --check    # exit 1 and name the pages that differ from the code

Sources: the `rayrec` argument parser, the config dataclasses with `rayrec.config.FIELD_DOCS`,
and the OpenAPI schema of the serving app (`rayrec.serving.app.api.openapi()`, which needs no
running Ray). tests/test_docs.py fails when a committed page differs from what this writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
HELP_WIDTH = 100  # fixed, so the page does not depend on the terminal that generated it
# NOTE: argparse's help layout changes between some Python versions; cli.md is generated with
# the Python that CI uses (3.11), so its test may fail on another version until regenerated.


def cli_reference() -> str:
    """Render every `rayrec` command's --help output, in the parser's order."""
    from rayrec.cli import build_parser

    sections = ["# `rayrec` command reference", GENERATED_NOTE,
                "Run any command with `--help` for the same text. Config overrides (`section.key=value`) "
                "are described in [configuration.md](configuration.md)."]
    for path, parser in walk_parsers(build_parser()):
        sections.append(f"## `{path}`\n\n```text\n{format_help(parser).rstrip()}\n```")
    return "\n\n".join(sections) + "\n"


def walk_parsers(parser: argparse.ArgumentParser, path: str = "rayrec") -> list[tuple[str, argparse.ArgumentParser]]:
    """Return the parser and all its subcommand parsers, depth first, as (command path, parser)."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += walk_parsers(child, f"{path} {name}")
    return found


def format_help(parser: argparse.ArgumentParser) -> str:
    """Return the help text at a fixed width and without colour, whatever the terminal."""
    saved = {name: os.environ.get(name) for name in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=str(HELP_WIDTH + 2), NO_COLOR="1")
    try:
        return parser.format_help()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def config_reference() -> str:
    """Render one table per config section: key, type, default and description."""
    from rayrec.config import FIELD_DOCS, RunConfig, config_fields

    intro = """A run is one YAML file with the sections `data`, `model` and `train`
([configs/ml-100k.yaml](../configs/ml-100k.yaml) is the shipped example). Keys left out take
the defaults below. Loading checks every key and value: an unknown key is an error that lists
the valid keys, and a value of the wrong type is an error that names the key and the expected
type.

Any key can be overridden on the command line of `rayrec prepare`, `train`, `bench train`,
`doctor` and `quickstart` as `section.key=value`; nested keys take more dots, for example
`data.columns.user=uid`. Values are read as YAML, so `5` is an integer, `0.5` a float, `null`
is none and `"123"` a string. The resolved config is saved as `config.yaml` in the prepared
data folder, in the training run folder (next to the report) and in the bundle."""
    sections = ["# Configuration reference", GENERATED_NOTE, intro]

    defaults = dataclasses.asdict(RunConfig())
    current = None
    rows: list[str] = []
    for key, field, hint in config_fields():
        section = key.split(".")[0]
        if section != current:
            if rows:
                sections.append("\n".join(rows))
            current = section
            section_class = typing.get_type_hints(RunConfig)[section]
            sections.append(f"## `{section}`\n\n{_first_paragraph(section_class.__doc__)}")
            rows = ["| key | type | default | description |", "|---|---|---|---|"]
        default = _lookup(defaults, key)
        rows.append(f"| `{key}` | {type_name(hint)} | {_default_text(default)} | "
                    f"{FIELD_DOCS.get(key, 'NOT DOCUMENTED').replace('|', '&#124;')} |")
    sections.append("\n".join(rows))
    return "\n\n".join(sections) + "\n"


def type_name(hint: Any) -> str:
    """Return a readable name for a config type hint, such as `integer`, `string or null`, `one of a, b`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if option is type(None) else type_name(option) for option in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(hint))
    if origin is list:
        return f"list of {type_name(typing.get_args(hint)[0])}"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(hint, getattr(hint, "__name__", str(hint)))


def api_reference(schema: dict[str, Any]) -> str:
    """Render the HTTP endpoints and their request and response models from an OpenAPI schema."""
    sections = ["# HTTP API reference", GENERATED_NOTE,
                f"{schema['info'].get('title', 'API')} {schema['info'].get('version', '')}, generated from the "
                "serving app's OpenAPI schema (also committed as [openapi.json](openapi.json), and served at "
                "`GET /openapi.json`). The server listens on 127.0.0.1:8000 with the shipped "
                "`serve_configs/ml-100k.yaml`."]
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            sections.append(_operation_section(method.upper(), path, operation))
    for name, model in schema.get("components", {}).get("schemas", {}).items():
        sections.append(_model_section(name, model))
    return "\n\n".join(sections) + "\n"


def openapi_schema() -> dict[str, Any]:
    from rayrec.serving.app import api

    return api.openapi()


def generated_pages() -> dict[str, Callable[[], str]]:
    """Map each page name under docs/ to the function that renders its text."""
    return {
        "cli.md": cli_reference,
        "configuration.md": config_reference,
        "api.md": lambda: api_reference(openapi_schema()),
        "openapi.json": lambda: json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n",
    }


def stale_pages(docs_dir: Path = DOCS_DIR) -> list[str]:
    """Names of the generated pages whose committed text differs from the code's."""
    stale = []
    for name, render in generated_pages().items():
        path = docs_dir / name
        if not path.exists() or path.read_text() != render():
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rayrec.docs", description="Generate docs/ reference pages from the code.")
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 if a page is stale (default: off, write).")
    parser.add_argument("--docs-dir", default=str(DOCS_DIR), help=f"Folder to write or check (default: {DOCS_DIR}).")
    args = parser.parse_args(argv)
    docs_dir = Path(args.docs_dir)

    if args.check:
        stale = stale_pages(docs_dir)
        for name in stale:
            print(f"{docs_dir / name} is stale; run `python -m rayrec.docs` and commit it.", file=sys.stderr)
        return 1 if stale else 0

    docs_dir.mkdir(parents=True, exist_ok=True)
    for name, render in generated_pages().items():
        (docs_dir / name).write_text(render())
        print(f"wrote {docs_dir / name}")
    return 0


GENERATED_NOTE = "<!-- Generated by `python -m rayrec.docs` from the code; do not edit by hand. -->"


def _operation_section(method: str, path: str, operation: dict[str, Any]) -> str:
    lines = [f"## `{method} {path}`"]
    if operation.get("summary"):
        lines.append(operation["summary"] + ".")
    if operation.get("description"):
        lines.append(operation["description"].strip())
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        lines.append(f"Request body (JSON): {_schema_type(body)}.")
    responses = ["| status | meaning | body |", "|---|---|---|"]
    for status, response in operation.get("responses", {}).items():
        content = response.get("content", {}).get("application/json", {}).get("schema")
        responses.append(f"| {status} | {response.get('description', '')} | {_schema_type(content) if content else ''} |")
    lines.append("\n".join(responses))
    return "\n\n".join(lines)


def _model_section(name: str, model: dict[str, Any]) -> str:
    lines = [f"### `{name}`"]
    if model.get("description"):
        lines.append(model["description"].strip())
    properties = model.get("properties", {})
    if properties:
        required = set(model.get("required", []))
        rows = ["| field | type | required | default | constraints | description |", "|---|---|---|---|---|---|"]
        for field_name, field in properties.items():
            default = json.dumps(field["default"]) if "default" in field else ""
            rows.append(f"| `{field_name}` | {_schema_type(field)} | {'yes' if field_name in required else 'no'} | "
                        f"{default} | {_constraints(field)} | {field.get('description', '').replace('|', '&#124;')} |")
        lines.append("\n".join(rows))
    if model.get("additionalProperties") is False:
        lines.append("Other fields are rejected.")
    return "\n\n".join(lines)


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema or "oneOf" in schema:
        options = [_schema_type(option) for option in schema.get("anyOf", schema.get("oneOf", []))]
        return " or ".join(options)
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if schema.get("type") == "array":
        items = _schema_type(schema.get("items", {}))
        return f"array of ({items})" if " or " in items else f"array of {items}"
    if schema.get("type") == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_schema_type(schema['additionalProperties'])}"
    return schema.get("type", "any")


def _constraints(field: dict[str, Any]) -> str:
    parts = []
    for option in [field, *field.get("anyOf", [])]:
        for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                            ("minItems", "items >="), ("maxItems", "items <="), ("minLength", "length >="),
                            ("maxLength", "length <="), ("pattern", "matches")):
            if key in option:
                parts.append(f"{symbol} {option[key]}")
    return ", ".join(parts)


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        values = values[key]
    return values


def _default_text(value: Any) -> str:
    if isinstance(value, dict):
        return "see below"
    return f"`{json.dumps(value)}`"


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


if __name__ == "__main__":
    sys.exit(main())
