"""`dinotune data check` and `dinotune data stats` (mounted by the main CLI as `dinotune data ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dinotune.cli_help import CLI
from dinotune.errors import DataError

data_app = CLI(
    help="Inspect datasets: find broken files and leakage, compute scaling statistics.",
    no_args_is_help=True,
)


@data_app.command("check")
def check(
    path: Path = typer.Argument(..., metavar="PATH", help="Dataset folder or CSV file."),
    task: str | None = typer.Option(None, help="classify, segment, detect or unlabelled (default: from the layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    num_classes: int | None = typer.Option(None, help="Segmentation: valid mask values are 0..N-1 (+255)."),
    class_map: Path | None = typer.Option(None, help="YAML/JSON class map (names, colours)."),
    patch_size: int = typer.Option(16, help="Backbone patch size; smaller images are flagged."),
    min_per_class: int = typer.Option(50, help="Warn when a class has fewer images."),
    max_imbalance: float = typer.Option(10.0, help="Warn when largest/smallest class exceeds this ratio."),
    channels: int | None = typer.Option(None, help="data.channels the files must fit (default: --config's, or 3)."),
    config: Path | None = typer.Option(None, "--config", help="Run config (YAML/JSON) whose data section to check."),
    group_by: str | None = typer.Option(
        None, help="Leakage check key: a DICOM keyword or CSV column (default: --config's, for DICOM PatientID)."
    ),
) -> None:
    """Report unreadable, truncated, empty, non-image and duplicate files, imbalance and mask problems,
    and the dataset-level problems training would stop on (one class, a class too small for the split,
    one patient in two splits, channel counts that do not fit data.channels).

    Exits 0 when there are only warnings, 1 when there are errors. Never modifies the data.

    \b
    Examples:
      $ dinotune data check images
      $ dinotune data check images --config configs/finetune.yaml --min-per-class 5
    """
    from dinotune.data.check import check_dataset
    from dinotune.data.depth import is_depth_layout

    if task is not None and task not in ("classify", "segment", "detect", "depth", "unlabelled"):
        raise DataError(f"--task must be classify, segment, detect, depth or unlabelled, got {task!r}")
    if task == "depth" or (task is None and is_depth_layout(path)):
        _check_depth(path, config, as_json)
    val_fraction = 0.1
    if config is not None:
        from dinotune.data.config import load_data_config

        cfg = load_data_config({**_data_section(config), "root": str(path)})
        channels, val_fraction = channels or cfg.channels, cfg.val_fraction
        group_by = group_by or cfg.group_by
    channels = channels or 3
    report = check_dataset(
        path,
        task,
        patch_size=patch_size,
        num_classes=num_classes,
        class_map=class_map,
        min_per_class=min_per_class,
        max_imbalance=max_imbalance,
        channels=channels,
        val_fraction=val_fraction,
        group_by=group_by,
    )
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    raise typer.Exit(report.exit_code)


def _check_depth(path: Path, config: Path | None, as_json: bool) -> None:
    """The depth layout's check, with the depth settings of --config's data section when given."""
    from dinotune.config import validate
    from dinotune.data.depth import DepthDataConfig
    from dinotune.data.depth_check import check_depth

    values = {**(_data_section(config) if config is not None else {}), "root": str(path), "task": "depth"}
    cfg = validate(DepthDataConfig, values)
    report = check_depth(path, depth_scale=cfg.depth_scale, min_depth=cfg.min_depth, max_depth=cfg.max_depth)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    raise typer.Exit(report.exit_code)


def _data_section(config: Path) -> dict:
    """The `data:` section of a run config (or the whole file when it has none)."""
    from dinotune.data.config import _read_mapping

    values = _read_mapping(config)
    return dict(values["data"]) if isinstance(values.get("data"), dict) else values


@data_app.command("stats")
def stats(
    path: Path = typer.Argument(..., metavar="PATH", help="Dataset folder or CSV file."),
    out: Path | None = typer.Option(None, "--out", help="Also write the YAML snippet to this file."),
    scaling: str = typer.Option("auto", help="auto, fixed or percentile."),
    max_images: int = typer.Option(256, help="Images sampled (seeded)."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Print per-band scaling (p1/p99) and mean/std as YAML to paste into the config's `data:` section.

    \b
    Example:
      $ dinotune data stats images --out stats.yaml
    """
    from dinotune.data.check import compute_stats, stats_yaml

    if scaling not in ("auto", "fixed", "percentile"):
        raise DataError(f"--scaling must be auto, fixed or percentile, got {scaling!r}")
    text = stats_yaml(compute_stats(path, max_images=max_images, scaling=scaling, seed=seed))
    typer.echo(text, nl=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
