"""One config system: strict pydantic models, loaded from YAML, with `key.sub=value` overrides.

Section models live beside the code they configure (e.g. `dinotune.data.config.DataConfig`); this
module owns loading, overriding, validation messages and writing the resolved config into every
output folder. Environment variables are read only here.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dinotune.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_BACKBONE = "random:vit_tiny16"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackboneConfig(StrictModel):
    source: str = Field(
        default_factory=lambda: os.environ.get("DINOTUNE_BACKBONE", DEFAULT_BACKBONE),
        description="Hugging Face id, local Hugging Face folder, official .pth, or random:<arch>.",
    )
    arch: str | None = Field(None, description="Expected architecture of a .pth (checked, not required).")
    in_chans: int | None = Field(None, ge=1, description="Input channels; default: data.channels, else 3.")


def cache_home() -> Path:
    """Where bundled datasets and feature caches go unless a config says otherwise."""
    return Path(os.environ.get("DINOTUNE_HOME", Path.home() / ".cache" / "dinotune"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (['a', 'b'], 3); values are parsed as YAML so numbers, lists and null work."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' is not of the form key=value (e.g. data.image_size=224).")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"Override '{text}' has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"Override '{text}': '{part}' is a value, not a section.")
            node = child
        node[path[-1]] = value
    return data


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of text, not a data file
MAX_CONFIG_NODES = 100_000  # values after expanding YAML aliases (an alias "bomb" expands exponentially)


def _expanded_size(node: yaml.Node, budget: int) -> int:
    """Nodes the document expands to (aliases counted every time they are used), stopping past `budget`."""
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        count += 1
        if count > budget:
            break
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            stack.extend(item for pair in current.value for item in pair)
    return count


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file '{path}' is larger than {MAX_CONFIG_BYTES >> 20} MB; is it a config?")
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the node graph: aliases are shared, not copied
        if node is not None and _expanded_size(node, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            raise ConfigError(
                f"Config file '{path}' expands to more than {MAX_CONFIG_NODES:,} values through "
                "YAML aliases; write the values out."
            )
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}: {getattr(err, 'problem', err)}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of keys to values.")
    return data


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the (sub)model that `loc` points into, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def validate(model: type[ModelT], data: dict[str, Any], origin: str = "config") -> ModelT:
    """Validate with messages that name the key and, for a typo, the closest valid key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        messages = []
        for error in err.errors():
            loc = tuple(error["loc"])
            key = ".".join(str(part) for part in loc)
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc), n=1)
                hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
                messages.append(f"unknown key '{key}'{hint}")
            else:
                text = error["msg"].removeprefix("Value error, ")
                shown = repr(error.get("input"))
                shown = shown if len(shown) <= 80 else shown[:77] + "..."  # a message stays one short line
                got = "" if error["type"] == "value_error" else f" (got {shown})"
                messages.append(f"'{key}': {text}{got}" if key else f"{text}{got}")
        raise ConfigError(f"Invalid {origin}: " + "; ".join(messages)) from None


def load_config(
    model: type[ModelT],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> ModelT:
    """YAML file (optional) < `base` values (e.g. from CLI options) < `key=value` overrides."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    _deep_update(data, base or {})
    apply_overrides(data, overrides or [])
    return validate(model, data, origin=f"config '{path}'" if path else "config")


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge `update` into `target`; None means 'not given' (an unset CLI option), never a value."""
    for key, value in update.items():
        if isinstance(value, dict):
            child = target.setdefault(key, {})
            if isinstance(child, dict):
                _deep_update(child, value)
                if not child:
                    del target[key]
        elif value is not None:
            target[key] = value


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_resolved(config: BaseModel, folder: str | Path) -> Path:
    """Write the fully resolved config (every default filled in) into an output folder."""
    from dinotune.atomic import write_text

    path = Path(folder) / "config.yaml"
    write_text(path, to_yaml(config))
    return path
