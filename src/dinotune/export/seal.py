"""The last step of an export: the card's input description written into each ONNX file's
`metadata_props` (so a graph copied alone still says how to feed it), then a sha256 of every file,
which the card lists and loading verifies (`model.card.verify_file`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dinotune.atomic import atomic_path, write_text
from dinotune.features.hashes import file_hash
from dinotune.model.card import CARD_FILE, ModelCard
from dinotune.version import __version__

METADATA_KEYS = ("dinotune.preprocessing", "dinotune.input_spec", "dinotune.task", "dinotune.classes")


def onnx_metadata(card: ModelCard) -> dict[str, str]:
    """The key/value pairs each graph carries: the plain text, the structured spec, task and classes."""
    spec = {k: v for k, v in card.input_spec.items() if k != "description"}
    return {
        "dinotune.preprocessing": card.input_spec["description"],
        "dinotune.input_spec": json.dumps(spec),
        "dinotune.task": card.task,
        "dinotune.classes": json.dumps(card.classes),
        "dinotune.version": __version__,
    }


def embed_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the graph's `metadata_props` entries of the same keys (weights stay where they are:
    external data files are neither loaded nor rewritten)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def file_checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """{name: {sha256, bytes}} of every file in the export folder but the card itself."""
    return {
        p.name: {"sha256": file_hash(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CARD_FILE
    }


def seal_export(folder: Path, card: ModelCard) -> None:
    """Metadata into every graph, then the checksums, then the card (last, so it lists final bytes)."""
    metadata = onnx_metadata(card)
    for graph in sorted(folder.glob("*.onnx")):
        embed_metadata(graph, metadata)
    card.files = file_checksums(folder)
    write_text(folder / CARD_FILE, card.to_json())
