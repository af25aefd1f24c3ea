"""The `dinotune` command: a thin typer layer, one subcommand per API verb.

User errors (`DinotuneError`) print one line that says what to fix and exit with code 2; any other
exception is a bug and keeps its traceback. `--verbose` shows tracebacks for user errors too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from dinotune.errors import DinotuneError

app = typer.Typer(
    name="dinotune",
    help="Turn DINOv3 vision foundation models into the best model for your own images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"verbose": False}

OverridesArg = typer.Argument(None, help="Config overrides as key=value, e.g. data.image_size=112.")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug logs.")) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    if not verbose:
        for noisy in ("transformers", "httpx", "huggingface_hub", "lightning"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def archs() -> None:
    """List the DINOv3 architectures and their Hugging Face ids."""
    from dinotune.backbones.specs import ARCHS

    for spec in ARCHS.values():
        ids = ", ".join(spec.hub_ids.values()) or "(test size, random weights only)"
        typer.echo(f"{spec.name:16s} {spec.family:9s} {ids}")


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Official .pth or Hugging Face folder."),
    dst: Path = typer.Argument(..., help="Hugging Face folder (from a .pth) or .pth (from a folder)."),
    overwrite: bool = typer.Option(False, help="Replace DST if it exists."),
) -> None:
    """Convert an official DINOv3 checkpoint to a Hugging Face folder, or back (lossless)."""
    from dinotune.backbones.convert import convert_checkpoint

    out = convert_checkpoint(src, dst, overwrite=overwrite)
    typer.echo(f"wrote {out}")


@app.command()
def embed(
    data_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    backbone: str = typer.Option(None, "--backbone", "-b", help="Backbone source (default: $DINOTUNE_BACKBONE)."),
    image_size: int = typer.Option(None, help="Input side in pixels (rounded to the patch size)."),
    batch_size: int = typer.Option(None, help="Images per batch."),
    num_workers: int = typer.Option(None, help="DataLoader worker processes."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: list[str] = OverridesArg,
) -> None:
    """Write CLS and mean-patch embeddings of every image in a folder to a safetensors file."""
    from dinotune.config import load_config
    from dinotune.features.embed import EmbedConfig, run_embed

    base = {"data_dir": data_dir, "out": out, "backbone": {"source": backbone}, "image_size": image_size,
            "batch_size": batch_size, "num_workers": num_workers}
    cfg = load_config(EmbedConfig, config, overrides, base=base)
    result = run_embed(cfg)
    typer.echo(f"wrote {result.path} ({result.count} images, dim {result.dim})")


def _mount_subcommands() -> None:
    from dinotune.cli_data import data_app

    app.add_typer(data_app, name="data", help="Check datasets and compute their statistics.")


_mount_subcommands()


def main() -> None:
    """Console entry point: turns user errors into one line and exit code 2."""
    try:
        app()  # standalone: typer handles usage errors (exit 2) and --help itself
    except DinotuneError as err:
        if _state["verbose"]:
            raise
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
