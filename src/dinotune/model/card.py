"""`model.json`: the one card every model folder carries, whatever its task.

Predict, evaluate, export, serve and compare read the card and dispatch on `task`, never on which
files a folder happens to hold. The head section says how to rebuild the head: `type` (linear,
decoder, fcos, onnx), `file`, and the task's own fields (classification: `feature_choice`; segmentation
and detection: `config`, `layers`; detection also `category_ids`); an export folder's head is
`type: onnx` and keeps the original under `source`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dinotune.data.preprocessing import Preprocessing
from dinotune.errors import CheckpointError
from dinotune.features.hashes import file_hash

FORMAT = "dinotune-model/1"
CARD_FILE = "model.json"
Task = Literal["classify", "multilabel", "segment", "embed", "depth", "detect"]
TASKS: tuple[str, ...] = ("classify", "multilabel", "segment", "embed", "depth", "detect")


@dataclass
class ModelCard:
    """Contents of `model.json`."""

    task: str
    classes: list[str]
    preprocessing: Preprocessing
    backbone: dict[str, Any]  # source, arch, in_chans, seed, identity, weights_dir (None: load from source)
    head: dict[str, Any]
    colours: list[list[int]] = field(default_factory=list)  # segmentation: one RGB colour per class
    ignore_index: int = 255  # segmentation: mask value that is not a class
    inference: dict[str, Any] = field(default_factory=dict)  # segmentation: InferenceConfig; detect: PostprocessConfig
    license: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # what the server reports the model as ("": the run folder's name)
    format: str = FORMAT
    input_spec: dict[str, Any] = field(default_factory=dict)  # export: every input step, as data and as text
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # export: {name: {sha256, bytes}} per file

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def is_onnx(self) -> bool:
        return self.head.get("type") == "onnx"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelCard:
        try:
            data = json.loads(text)
            if data.pop("multilabel", False):  # cards written before multilabel became a task
                data["task"] = "multilabel"
            data["preprocessing"] = Preprocessing(**data["preprocessing"])
            card = cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{source} is not a dinotune model card ({err}).") from None
        if card.format != FORMAT:
            raise CheckpointError(f"{source} has format '{card.format}'; this dinotune reads '{FORMAT}'.")
        if card.task not in TASKS:
            raise CheckpointError(f"{source}: task '{card.task}' is not one of {', '.join(TASKS)}.")
        return card


def read_card(folder: str | Path) -> ModelCard:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not a dinotune model folder: it has no {CARD_FILE}.")
    return ModelCard.from_json(path.read_text(), str(path))


def inside(folder: Path, relative: str, what: str) -> Path:
    """`folder / relative`, refused when it resolves outside `folder` (a crafted card must not read
    another run's or the system's files)."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{folder / CARD_FILE}: {what} '{relative}' points outside the model folder.")
    return path


def verify_file(folder: Path, card: ModelCard, path: Path) -> None:
    """Refuse a model file whose sha256 differs from the card's (changed, truncated or swapped after
    export); files the card does not list (cards written before checksums) pass unchecked."""
    expected = card.files.get(path.name, {}).get("sha256")
    if expected and file_hash(path) != expected:
        raise CheckpointError(
            f"{path}: sha256 differs from {folder / CARD_FILE} (files.{path.name}); the file was changed or "
            "truncated after export: copy the export folder again or re-export it."
        )
