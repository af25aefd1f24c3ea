"""The `dinotune` command: a thin typer layer, one subcommand per API verb.

User errors (`DinotuneError`) print one line that says what to fix and exit with code 2; any other
exception is a bug and keeps its traceback. `--verbose` shows tracebacks for user errors too.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from dinotune.config import load_config
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
    from dinotune.features.embed import EmbedConfig, run_embed

    base = {"data_dir": data_dir, "out": out, "backbone": {"source": backbone}, "image_size": image_size,
            "batch_size": batch_size, "num_workers": num_workers}
    cfg = load_config(EmbedConfig, config, overrides, base=base)
    result = run_embed(cfg)
    typer.echo(f"wrote {result.path} ({result.count} images, dim {result.dim})")


@app.command()
def probe(
    data: Path = typer.Argument(..., help="Labelled dataset (ImageFolder, CSV or JSON annotations)."),
    backbone: str = typer.Option(None, "--backbone", "-b", help="Backbone source (default: $DINOTUNE_BACKBONE)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/probe-<time>)."),
    image_size: int = typer.Option(None, help="Input side in pixels."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: list[str] = OverridesArg,
) -> None:
    """Linear-probe sweep + kNN on frozen features; saves the best head as a model."""
    from dinotune.verbs.probe import ProbeConfig, run_probe

    base = {"data": {"root": data, "image_size": image_size}, "backbone": {"source": backbone}, "out": out}
    result = run_probe(load_config(ProbeConfig, config, overrides, base=base))
    typer.echo(f"run folder: {result.run_dir}")


@app.command()
def knn(
    data: Path = typer.Argument(..., help="Labelled dataset."),
    backbone: str = typer.Option(None, "--backbone", "-b", help="Backbone source."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/knn-<time>)."),
    image_size: int = typer.Option(None, help="Input side in pixels."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: list[str] = OverridesArg,
) -> None:
    """Weighted kNN (k = 10, 20, 100, 200; T = 0.07) on frozen features."""
    from dinotune.verbs.probe import ProbeConfig, run_probe
    from dinotune.verbs.runs import new_run_dir

    base = {"data": {"root": data, "image_size": image_size}, "backbone": {"source": backbone},
            "out": out or new_run_dir("knn"), "sweep": {"enabled": False}}
    result = run_probe(load_config(ProbeConfig, config, overrides, base=base))
    typer.echo(f"run folder: {result.run_dir}")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run or model folder (with model.json)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(3, help="Labels to show per image."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the predictions to this CSV file "
                             "(segmentation: the output folder, default ./masks)."),
) -> None:
    """Classify images with a saved model (or, for a segmentation run, write index-PNG masks and overlays)."""
    if (run / "segmentation.json").is_file():
        from dinotune.segmentation.verb import predict_masks

        masks = predict_masks(run, images, out or Path("masks"))
        typer.echo(f"wrote {len(masks)} masks and overlays to {out or Path('masks')}")
        return
    from dinotune.verbs.predict import predict as run_predict
    from dinotune.verbs.predict import write_predictions_csv

    predictions = run_predict(run, images, top_k=top_k)
    for p in predictions:
        others = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top[1:])
        typer.echo(f"{p.path}\t{p.label}\t{p.probability:.3f}" + (f"\t({others})" if others else ""))
    if out:
        write_predictions_csv(out, predictions)
        typer.echo(f"wrote {out}")


@app.command()
def quickstart(
    backbone: str = typer.Option(None, "--backbone", "-b", help="Backbone source; default: $DINOTUNE_BACKBONE, "
                                 "a DINOv3 in the local Hugging Face cache, else a small random-weight ViT."),
    per_class: int = typer.Option(300, help="Images per class taken from the bundled dataset."),
    image_size: int = typer.Option(112, help="Input side in pixels."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default: runs/quickstart-<time>)."),
) -> None:
    """The whole loop on a bundled real dataset: data check, features, probe, kNN, metrics, predictions."""
    from dinotune.verbs.quickstart import quickstart as run_quickstart

    run_quickstart(backbone, per_class=per_class, image_size=image_size, out=out)


@app.command()
def pretrain(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/ssl_continuation.yaml."),
    overrides: list[str] = OverridesArg,
) -> None:
    """Self-supervised continued pretraining (DINO + iBOT + KoLeo, optional Gram anchoring) on unlabelled images."""
    from dinotune.verbs.pretrain import PretrainConfig, run_pretrain

    run_dir = run_pretrain(load_config(PretrainConfig, config, overrides))
    typer.echo(f"run folder: {run_dir} (continued backbone: {run_dir}/backbone_hf and {run_dir}/backbone.pth)")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run or model folder (with model.json)."),
    data: list[Path] = typer.Option(..., "--data", "-d", help="Dataset; repeat for a domain-shift table."),
    split: str = typer.Option("test", help="Split to evaluate when the data has splits."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: RUN/evaluation)."),
    robustness: bool = typer.Option(False, help="Accuracy under corruptions (5 severities) and FGSM/PGD."),
    ood_data: Path = typer.Option(None, help="Folder of out-of-distribution images: OOD AUROC, FPR@95TPR."),
    epsilon: float = typer.Option(0.035, help="Adversarial radius in normalised-pixel units."),
) -> None:
    """Metrics and a self-contained report.html: curves, calibration, mistakes, features, robustness, OOD."""
    from dinotune.evaluation import evaluate as run_evaluate

    if (run / "segmentation.json").is_file():
        from dinotune.errors import DinotuneError

        raise DinotuneError(f"'{run}' is a segmentation run: its report is {run / 'report.html'} (written at the end "
                            "of training, with per-image IoU in per_image_iou.csv); evaluating it on new data is not "
                            "supported yet - use `dinotune predict` for masks.")

    result = run_evaluate(run, data=data if len(data) > 1 else data[0], split=split, out=out,
                          robustness=robustness, ood_data=ood_data, epsilon=epsilon)
    typer.echo(f"wrote {result.report_path}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders to compare."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write comparison.json and comparison.html here."),
) -> None:
    """One table of the main metrics, training time and model size of several runs."""
    from dinotune.evaluation import compare as run_compare
    from dinotune.evaluation.compare import format_table

    typer.echo(format_table(run_compare(runs, out=out)))


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run or model folder (with model.json)."),
    out: Path = typer.Option(None, "--out", "-o", help="Export folder (default: RUN/export)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    quantize: str = typer.Option(None, help="int8: also write an ONNX Runtime int8 model and compare it."),
    static: bool = typer.Option(False, help="Static int8 quantisation with calibration images (default dynamic)."),
    opset: int = typer.Option(None, help="ONNX opset (default: the exporter's)."),
    backbone_only: bool = typer.Option(False, help="Export the backbone's embeddings, without the head."),
    calibration: Path = typer.Option(None, help="Folder of images for verification and int8 calibration."),
) -> None:
    """Export to ONNX, verified against PyTorch (max abs difference), optionally int8-quantised."""
    from dinotune.export import export_model

    report = export_model(run, out or Path(run) / "export", fmt=fmt, quantize=quantize, static=static, opset=opset,
                          backbone_only=backbone_only, calibration_images=calibration)
    typer.echo(json.dumps(report, indent=2, default=str))


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Run/model folder, export folder, or exported .onnx with its model.json."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 inside a container)."),
    port: int = typer.Option(8000, help="Port."),
    config: Path = typer.Option(None, "--config", "-c", help="YAML with ServeConfig fields."),
    overrides: list[str] = OverridesArg,
) -> None:
    """HTTP server: /predict, /predict/batch, /health, /ready, /info, /metrics, with micro-batching."""
    from dinotune.serve import ServeConfig
    from dinotune.serve import serve as run_serve

    run_serve(model, host=host, port=port, config=load_config(ServeConfig, config, overrides))


TRAIN_TASKS = {  # task key in the YAML -> (module, config model, runner)
    "probe": ("dinotune.verbs.probe", "ProbeConfig", "run_probe"),
    "finetune": ("dinotune.verbs.finetune", "FinetuneConfig", "run_finetune"),
    "segment": ("dinotune.segmentation.verb", "SegmentConfig", "run_segment"),
}


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config whose `task` key names the job (probe, finetune, segment)."),
    overrides: list[str] = OverridesArg,
    resume: bool = typer.Option(False, help="Continue the run in `out` exactly where it stopped."),
) -> None:
    """Run the job a YAML config describes, e.g. `dinotune train configs/finetune.yaml data.root=DIR`."""
    import importlib

    from dinotune.config import apply_overrides, read_yaml
    from dinotune.errors import ConfigError

    task = apply_overrides(read_yaml(config), [o for o in overrides or [] if o.startswith("task=")]).get("task")
    if task not in TRAIN_TASKS:
        raise ConfigError(f"'{config}': key 'task' must be one of {', '.join(TRAIN_TASKS)} (got {task!r}).")
    module_name, model_name, runner_name = TRAIN_TASKS[task]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, model_name), config, overrides)
    runner = getattr(module, runner_name)
    if resume and task == "probe":
        raise ConfigError("--resume is for training jobs; a probe re-run reuses its cached features anyway.")
    result = runner(cfg, resume=True) if resume else runner(cfg)
    typer.echo(f"run folder: {result.run_dir}")


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
