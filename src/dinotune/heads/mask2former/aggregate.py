"""Class aggregation: the user's classes as unions of a head's classes (e.g. building = house + skyscraper).

A mapping file (YAML or JSON) maps each user class to a list of head classes, by name or index:

    background: [wall, floor, sky]
    building: [building, house, skyscraper, 48]

Its matrix A (N_user, K) has A[u, k] = 1 when head class k belongs to user class u; a user class's
probability is the sum of its head classes' probabilities. Head classes left out of every user class
still take probability mass (they behave like "no object"); one head class in two user classes is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from dinotune.errors import ConfigError


def read_mapping(path: str | Path) -> dict[str, list[Any]]:
    """The mapping file as {user class: [head class name or index, ...]}, in file order."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"head.m2f.aggregate: cannot read '{path}' ({err}).") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"head.m2f.aggregate: '{path}' must map each user class to a list of head classes.")
    out = {}
    for user, members in data.items():
        members = members if isinstance(members, list) else [members]
        if not members:
            raise ConfigError(f"head.m2f.aggregate: '{path}': class '{user}' lists no head classes.")
        out[str(user)] = members
    return out


def read_class_names(path: str | Path) -> list[str]:
    """A YAML/JSON list of class names (a head's own classes)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"head.m2f.head_classes: cannot read '{path}' ({err}).") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"head.m2f.head_classes: '{path}' must be a list of class names.")
    return [str(name) for name in data]


def aggregation_matrix(mapping: dict[str, list[Any]], head_classes: list[str], source: str = "mapping") -> Tensor:
    """The (N_user, K) 0/1 matrix of `mapping`; head classes by name or index into `head_classes`."""
    index = {name: i for i, name in enumerate(head_classes)}
    matrix = torch.zeros(len(mapping), len(head_classes))
    owner: dict[int, str] = {}
    for row, (user, members) in enumerate(mapping.items()):
        for member in members:
            k = member if isinstance(member, int) else index.get(str(member))
            if k is None or not 0 <= k < len(head_classes):
                names = ", ".join(head_classes[:8]) + (", ..." if len(head_classes) > 8 else "")
                raise ConfigError(
                    f"head.m2f.aggregate ({source}): '{member}' of class '{user}' is not a head class "
                    f"(names: {names}; or indices 0..{len(head_classes) - 1})."
                )
            if k in owner and owner[k] != user:
                raise ConfigError(
                    f"head.m2f.aggregate ({source}): head class '{head_classes[k]}' is in both "
                    f"'{owner[k]}' and '{user}'."
                )
            owner[k] = user
            matrix[row, k] = 1.0
    return matrix


def mapping_from_matrix(matrix: Tensor, head_classes: list[str], user_classes: list[str]) -> dict[str, list[str]]:
    """The inverse of `aggregation_matrix` by name: what a model card stores."""
    return {
        u: [head_classes[k] for k in row.nonzero().flatten().tolist()]
        for u, row in zip(user_classes, matrix, strict=True)
    }


__all__ = ["aggregation_matrix", "mapping_from_matrix", "read_class_names", "read_mapping"]
