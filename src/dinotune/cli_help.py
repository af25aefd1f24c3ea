"""Plain `--help`: usage lines and option rows in the words people type (`RUN IMAGES...`, `--top-k INTEGER`),
without typer's `{RUN}` and `<int>` placeholders, and each command's examples under an `Examples:` heading.

Examples are written in docstrings as lines starting with `$ dinotune`; tests/test_cli.py runs every one.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

_TYPE_WORDS = {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "path": "PATH", "file": "FILE", "dir": "DIR"}


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.nargs == 1 or name.endswith("...") else f"{name}..."


def _value_word(param: Any, ctx: Any) -> str:
    """`--top-k INTEGER`: the option's metavar, else its type in capitals; choices as `a|b`."""
    if param.metavar:
        return param.metavar
    label = param.display_type(ctx).strip("<>")
    label = re.sub(r"^list\[(.*)\]$", r"\1", label).replace(" range", "")
    return _TYPE_WORDS.get(label.lower(), label if "|" in label else label.upper())


def _option_row(param: Any, ctx: Any) -> tuple[str, str] | None:
    record = param.get_help_record(ctx)  # typer's record: we keep its help text (with defaults)
    if record is None:
        return None
    short = [o for o in param.opts if not o.startswith("--")]
    names = ", ".join(short + [o for o in param.opts if o.startswith("--")][:1])  # later long names are aliases
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not (param.is_flag or param.count):
        names += " " + _value_word(param, ctx)
    return names, _plain_range(record[1])


def _plain_range(help_text: str) -> str:
    """typer's `[x>=1]`, `[0<=x<=1]` in words: `[at least 1]`, `[0 to 1]`."""
    help_text = re.sub(r"(\S+)<=x<=(\S+?)([;\]])", r"\1 to \2\3", help_text)
    help_text = re.sub(r"x>=(\S+?)([;\]])", r"at least \1\2", help_text)
    return re.sub(r"x<=(\S+?)([;\]])", r"at most \1\2", help_text)


class PlainCommand(TyperCommand):
    """A typer command whose help reads as plain text in a terminal, a log or a README."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            if param.hidden:
                continue
            if param.param_type_name == "argument":
                args.append((_argument_name(param), param.help or ""))
            elif (row := _option_row(param, ctx)) is not None:
                opts.append(row)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class PlainGroup(TyperGroup):
    """The `dinotune` and `dinotune data` groups: plain help, examples kept as written."""


class CLI(typer.Typer):
    """`typer.Typer` whose commands all use PlainCommand, including ones added later with `@app.command()`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=PlainGroup, rich_markup_mode=None, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] = PlainCommand, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)


# Parameters several commands share, spelled and explained once.
OverridesArg = typer.Argument(
    None, metavar="KEY=VALUE...", help="Config overrides: any key of the command's YAML, dotted (e.g. sweep.epochs=10)."
)
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace the output folder if it exists.")
BackboneOpt = typer.Option(
    None,
    "--backbone",
    "-b",
    help="Hugging Face id, folder, .pth or random:ARCH (backbone.source; default: $DINOTUNE_BACKBONE).",
)
OutOpt = typer.Option(None, "--out", "-o", help="Run folder (default: runs/COMMAND-TIME).")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (its keys, overridden by KEY=VALUE).")
ImageSizeOpt = typer.Option(None, help="Input side in pixels, a multiple of the patch size (data.image_size).")
QUICKSTART_BACKBONE = "Backbone; default: $DINOTUNE_BACKBONE, a DINOv3 in the Hugging Face cache, else random weights."

EXAMPLE = re.compile(r"^\s*\$ (dinotune (?:.*\\\n)*.*)$", re.MULTILINE)


def help_examples(text: str) -> list[str]:
    """The `$ dinotune ...` commands of a help text, without the `$ ` (a trailing `\\` continues a line)."""
    return [" ".join(re.sub(r"\\\n", " ", example).split()) for example in EXAMPLE.findall(text)]
