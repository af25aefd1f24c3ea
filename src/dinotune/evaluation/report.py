"""Assemble the evaluation report of a classifier from an `EvaluationResult` (arrays -> figures -> HTML).

Every section is always present, so a reader can rely on the layout; a section that does not apply
(no training log, no validation split, a multi-label model) says why instead of disappearing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinotune.evaluation.results import EvaluationResult
from dinotune.report import plots
from dinotune.report.html import Report, cards, figure, note, paragraph, table, trust_banners

__all__ = ["SECTIONS", "build_report"]

# Section ids in report order (the tests check they are all present).
SECTIONS = (
    "summary",
    "per-class",
    "confusion",
    "curves",
    "calibration",
    "mistakes",
    "training",
    "features",
    "patches",
    "domain-shift",
    "robustness",
    "ood",
)

SUMMARY_HEADERS = {
    "dataset": "Dataset",
    "split": "Split",
    "images": "Images",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "f1_macro": "Macro F1",
    "auroc": "AUROC",
    "map": "mAP",
    "f1_micro": "Micro F1",
    "auroc_macro": "Macro AUROC",
    "ece": "ECE",
}


def _png(fig: Any) -> bytes:
    return plots.figure_png(fig)


def _summary(ev: EvaluationResult, report: Report) -> None:
    main = ev.datasets[0]
    m = main.metrics
    keys = (
        ("map", "f1_micro", "f1_macro", "auroc_macro")
        if ev.card.multilabel
        else ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "top5_accuracy")
    )
    tiles = {SUMMARY_HEADERS.get(k, "Top-5 accuracy"): m.get(k) for k in keys if k in m}
    if main.calibration:
        tiles["ECE (15 bins)"] = main.calibration["ece"]
        if main.calibration.get("temperature_applied"):
            tiles["ECE, temperature scaled"] = main.calibration["ece_scaled"]
    text = [cards(tiles), paragraph(f"{len(main.predictions)} images of split '{main.split}' of {main.root}.")]
    if main.note:
        text.append(note(main.note))
    report.add("summary", "Summary", *text)
    per = m.get("per_label" if ev.card.multilabel else "per_class", [])
    columns = (
        {"label": "Label", "average_precision": "AP", "auroc": "AUROC", "f1": "F1", "support": "Support"}
        if ev.card.multilabel
        else {
            "class": "Class",
            "precision": "Precision",
            "recall": "Recall",
            "f1": "F1",
            "support": "Support",
            "auroc": "AUROC",
        }
    )
    report.add(
        "per-class",
        "Per-class metrics",
        table(per, columns),
        note(
            "Precision: of the images predicted as the class, the share that is right. Recall: of the "
            "images of the class, the share found. Support: images of the class."
        ),
    )


def _curves_sections(ev: EvaluationResult, report: Report) -> None:
    main, names = ev.datasets[0], ev.card.classes
    pred = main.predictions
    if ev.card.multilabel:
        report.add("confusion", "Confusion matrix", note("Not shown for multi-label models (see per-label table)."))
        onehot = pred.labels
    else:
        report.add(
            "confusion",
            "Confusion matrix",
            figure(
                _png(plots.confusion_matrix_figure(main.metrics["confusion_matrix"], names)),
                "normalised confusion matrix",
                900,
            ),
            note("Rows are true classes and sum to 1; the diagonal is each class's recall."),
        )
        onehot = np.eye(len(names))[pred.labels]
    report.add(
        "curves",
        "ROC and precision-recall curves",
        figure(_png(plots.roc_pr_figure(pred.probs, onehot, names)), "ROC and precision-recall curves"),
    )
    if main.reliability is None:
        report.add("calibration", "Calibration", note("Calibration is reported for single-label models only."))
        return
    c = main.calibration or {}
    report.add(
        "calibration",
        "Calibration",
        figure(
            _png(plots.reliability_figure(main.reliability, main.reliability_scaled, c.get("temperature"))),
            "reliability diagram",
            640,
        ),
        *_calibration_table(c),
    )


def _calibration_table(c: dict[str, Any]) -> list[str]:
    """Before and after temperature scaling, on the validation split (where the choice is made) and on the
    evaluated split, with the row applied marked and the reason written out."""
    own = {"what": "model's own probabilities", "val_ece": c.get("val_ece"), "ece": c.get("ece"), "nll": c.get("nll")}
    rows = [own]
    if "temperature" not in c:
        return [
            table(rows, {"what": "", "ece": "ECE (15 bins)", "nll": "NLL"}),
            note("No temperature scaling: it needs a validation split distinct from the evaluated split."),
        ]
    applied = c.get("temperature_applied", True)
    scaled = f"temperature scaled (T = {c['temperature']:.3f}, fitted on val)"
    rows.append({"what": scaled, "val_ece": c.get("val_ece_scaled"), "ece": c.get("ece_scaled")})
    rows[1]["nll"] = c.get("nll_scaled")
    rows[1 if applied else 0]["what"] += "  [applied]"
    columns = {"what": "", "val_ece": "ECE on val", "ece": "ECE (15 bins)", "nll": "NLL"}
    return [
        table(rows, columns),
        note(c.get("temperature_reason", "")),
        note(
            "Temperature scaling divides the logits by T, fitted on the validation split; it changes "
            "confidences, never predictions. Whether to apply it is decided on the validation split too, "
            "so the evaluated split never steers the choice."
        ),
    ]


def _picture_sections(ev: EvaluationResult, report: Report) -> None:
    if ev.mistakes:
        images, true, pred, conf = zip(*ev.mistakes, strict=True)
        body = figure(_png(plots.mistakes_figure(images, true, pred, conf)), "most confident mistakes")
    else:
        body = note("No mistakes to show." if not ev.card.multilabel else "Not shown for multi-label models.")
    report.add("mistakes", "Most confident mistakes", body)
    if ev.curves:
        body = figure(_png(plots.training_curves_figure(ev.curves, ev.curve_x, ev.resumed_at)), "training curves")
        if ev.resumed_at:
            steps = ", ".join(f"{s:g}" for s in ev.resumed_at)
            body += note(f"The whole history across {len(ev.resumed_at)} resume(s); dotted lines: resumed at {steps}.")
    else:
        body = note(
            "No training curves: this run has no training log (logs/**/metrics.csv); linear probes "
            "train their heads in a sweep, see sweep.csv."
        )
    report.add("training", "Training curves", body)
    main = ev.datasets[0]
    if ev.projections and not ev.card.multilabel:
        body = "".join(
            figure(
                _png(plots.feature_view_figure(points, main.predictions.labels, ev.card.classes, method)),
                f"feature space {method}",
                760,
            )
            for method, points in ev.projections.items()
        )
        if "UMAP" not in ev.projections:
            body += note("UMAP view: install the `umap-learn` package to add it.")
    else:
        body = note("Needs a single-label model and at least 3 images.")
    report.add(
        "features",
        "Feature space",
        body,
        note(
            "The features the classifier's head sees, projected to 2-D; well separated colours mean "
            "the backbone already tells the classes apart."
        ),
    )
    if ev.patches and ev.patches[0]:
        body = figure(_png(plots.patch_pca_figure(*ev.patches)), "patch feature PCA")
    else:
        body = note("No images available.")
    report.add(
        "patches",
        "Patch features",
        body,
        note(
            "One PCA over the patch features of these images; similar colours mark parts the backbone "
            "sees as similar, across images."
        ),
    )


def _robustness_table(rows: list[dict[str, Any]]) -> str:
    """One row per corruption, one column per severity: compact enough to read at a glance."""
    pivot: dict[str, dict[str, Any]] = {}
    for r in rows:
        cell = f"{r['accuracy']:.3f}" + (f" ({r['relative']:.0%})" if r["relative"] is not None else "")
        pivot.setdefault(r["corruption"], {"corruption": r["corruption"]})[f"s{r['severity']}"] = cell
    severities = sorted({r["severity"] for r in rows})
    return table(list(pivot.values()), {"corruption": "Corruption", **{f"s{k}": f"Severity {k}" for k in severities}})


def _extra_sections(ev: EvaluationResult, report: Report) -> None:
    shift = ev.metrics.get("domain_shift")
    if shift:
        cols = {k: v for k, v in SUMMARY_HEADERS.items() if any(k in row for row in shift)}
        report.add("domain-shift", "Domain shift", table(shift, cols))
    else:
        report.add("domain-shift", "Domain shift", note("One dataset evaluated; pass several to compare them."))
    _robustness_section(ev, report)
    _ood_section(ev, report)


def _robustness_section(ev: EvaluationResult, report: Report) -> None:
    rob = ev.metrics.get("robustness")
    if rob:
        parts = [
            figure(_png(plots.robustness_figure(rob["rows"])), "robustness to corruptions", 820),
            paragraph(f"Clean accuracy on these {rob['num_samples']} images: {rob['clean_accuracy']:.3f}."),
            _robustness_table(rob["rows"]),
            note(
                "Each cell: accuracy (accuracy relative to clean). Severity parameters follow ImageNet-C; "
                "metrics.json lists the parameter values."
            ),
        ]
        if rob.get("skipped"):
            parts.append(note(f"Skipped (need 1 or 3 channels): {', '.join(rob['skipped'])}."))
        adv = ev.metrics.get("adversarial")
        if adv:
            parts += [
                table(
                    [
                        {"attack": "none (clean)", "acc": adv["clean_accuracy"]},
                        {"attack": "FGSM", "acc": adv["fgsm_accuracy"]},
                        {"attack": f"PGD ({adv['pgd_steps']} steps)", "acc": adv["pgd_accuracy"]},
                    ],
                    {"attack": "Adversarial attack", "acc": "Accuracy"},
                ),
                note(
                    f"L-inf epsilon {adv['epsilon']} in normalised-pixel space (about "
                    f"{255 * float(np.mean(adv['epsilon_raw_pixels'])):.1f}/255 in raw pixels), "
                    f"{adv['num_samples']} images."
                ),
            ]
        report.add("robustness", "Robustness", *parts)
    else:
        report.add("robustness", "Robustness", note("Not run: pass --robustness (single-label models)."))


def _ood_section(ev: EvaluationResult, report: Report) -> None:
    ood = ev.metrics.get("ood")
    if ood:
        rows = [{"method": k, **v} for k, v in ood["methods"].items()]
        parts = [
            table(rows, {"method": "Score", "auroc": "AUROC", "fpr_at_95_tpr": "FPR at 95% TPR"}),
            figure(_png(plots.ood_figure(ev.ood_scores)), "OOD score histograms"),
            note(
                f"{ood['id_images']} in-distribution images against {ood['ood_images']} images from "
                f"{ood['ood_root']}. Scores are oriented so that higher = more out-of-distribution; "
                "AUROC 1 = perfect separation, 0.5 = chance; FPR at 95% TPR = share of OOD images "
                "still accepted when 95% of in-distribution images are."
            ),
        ]
        backwards = [k for k, v in ood["methods"].items() if v["auroc"] < 0.5]
        if backwards:
            parts.append(
                note(
                    f"AUROC below 0.5 for {', '.join(backwards)}: on these images the score ranks "
                    "backwards (the model is more confident, or closer to its training features, on "
                    "the OOD images than on its own test images); do not use it as an OOD detector "
                    "here."
                )
            )
        if "knn_skipped" in ood:
            parts.append(note(f"kNN distance not computed: {ood['knn_skipped']}."))
        report.add("ood", "Out-of-distribution detection", *parts)
    else:
        report.add("ood", "Out-of-distribution detection", note("Not run: pass --ood-data DIR."))


def build_report(ev: EvaluationResult) -> Report:
    """The full report of one evaluation, sections in the order of SECTIONS."""
    card = ev.card
    report = Report(
        f"Evaluation of {ev.run.name}",
        f"{card.backbone.get('arch') or card.backbone.get('source')} + {card.head.get('type', 'head')} "
        f"head ({card.head.get('feature_choice', '')}), {len(card.classes)} classes"
        f"{', multi-label' if card.multilabel else ''}. Run folder: {ev.run}",
    )
    main = ev.datasets[0]
    trust_banners(report, card.backbone, len(main.predictions), main.metrics.get("accuracy"))
    _summary(ev, report)
    _curves_sections(ev, report)
    _picture_sections(ev, report)
    _extra_sections(ev, report)
    return report
