"""One vocabulary: what each command-line parameter is called in the YAML configs and the Python API.

The commands build their configs from `NAMES` (`config_values`), so the table in docs/cli.md, written from
the same dicts by `vocabulary_table` (scripts/write_cli_vocabulary.py), is the mapping the code uses.
tests/test_cli.py checks that every parameter of every command has an entry and that docs/cli.md is current.
"""

from __future__ import annotations

from typing import Any

# CLI parameter -> its name in YAML configs and Python (a dotted name is a config key).
NAMES: dict[str, str] = {
    "backbone": "backbone.source",
    "batch_size": "batch_size",
    "calibration_images": "calibration_images",
    "config": "(the YAML file holding these keys)",
    "data": "data.root",
    "epsilon": "epsilon",
    "fmt": "fmt",
    "host": "host",
    "image_size": "data.image_size",
    "images": "images",
    "model": "model",
    "num_workers": "num_workers",
    "ood_data": "ood_data",
    "opset": "opset",
    "out": "out",
    "overrides": "(any key of the YAML, dotted: sweep.epochs=10)",
    "overwrite": "overwrite",
    "per_class": "per_class",
    "port": "port",
    "quantize": "quantize",
    "resume": "resume",
    "robustness": "robustness",
    "run": "run",
    "runs": "runs",
    "split": "split",
    "static": "static",
    "backbone_only": "backbone_only",
    "top_k": "top_k",
    "workers": "workers",
    "threshold": "threshold",
    "group_by": "data.group_by",
    "tile": "tile",
    "tile_stride": "tile_stride",
    "embeddings": "embeddings",
    "depth_format": "depth_format",
    "src": "src",
    "dst": "dst",
    "silent": "(logging level WARNING)",
    "verbose": "(logging level DEBUG, warnings shown)",
}

# Where one command's config spells a thing differently (its config has no `data:` section).
PER_COMMAND: dict[tuple[str, str], str] = {
    ("embed", "data"): "data_dir",
    ("embed", "image_size"): "image_size",
    ("evaluate", "data"): "data",
    ("quickstart", "backbone"): "backbone",
    ("quickstart", "image_size"): "image_size",
    ("data check", "path"): "path",
    ("data stats", "path"): "path",
}

DATA_CHECK_NAMES = ("task", "as_json", "num_classes", "class_map", "patch_size", "min_per_class", "max_imbalance")
DATA_STATS_NAMES = ("max_images", "seed", "scaling", "channels")
NAMES.update({name: name for name in DATA_CHECK_NAMES + DATA_STATS_NAMES})
NAMES["as_json"] = "(JSON output)"


def name_of(command: str, param: str) -> str:
    """What `param` of `command` is called in the YAML and the Python API."""
    return PER_COMMAND[(command, param)] if (command, param) in PER_COMMAND else NAMES[param]


def config_values(command: str, **values: Any) -> dict[str, Any]:
    """Nested config values from CLI parameters (`backbone="x"` -> `{"backbone": {"source": "x"}}`)."""
    nested: dict[str, Any] = {}
    for param, value in values.items():
        *parents, leaf = name_of(command, param).split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


def _spelling(param: Any) -> str:
    if param.param_type_name == "argument":
        return param.metavar or param.name.upper()
    short = [o for o in param.opts if not o.startswith("--")]
    return ", ".join(short + [o for o in param.opts if o.startswith("--")][:1])  # later long names are aliases


def vocabulary_rows(group: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(command, CLI spelling, YAML/Python name) for every parameter of every command of a click group."""
    rows = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):
            rows += vocabulary_rows(command, f"{full} ")
            continue
        for param in command.params:
            if param.name != "help":
                rows.append((full, _spelling(param), name_of(full, param.name)))
    return rows


def vocabulary_table(group: Any) -> str:
    """The markdown table of docs/cli.md: the options of `dinotune` itself first, then every command's."""
    rows = [("(any)", _spelling(p), name_of("", p.name)) for p in group.params if p.name != "help"]
    rows += vocabulary_rows(group)
    lines = ["| command | on the command line | in YAML and Python |", "|---|---|---|"]
    lines += [f"| `{c}` | `{s}` | {n if n.startswith('(') or ' ' in n else f'`{n}`'} |" for c, s, n in rows]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- vocabulary: python scripts/write_cli_vocabulary.py -->", "<!-- end of vocabulary -->"


def write_table(page: str, group: Any) -> str:
    """`page` with the text between BEGIN and END replaced by the current table of `group` (the CLI)."""
    head, rest = page.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{vocabulary_table(group)}{END}{rest.split(END, 1)[1]}"
