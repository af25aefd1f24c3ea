"""A self-contained HTML report: inline CSS, images as base64 PNG, no scripts and no external URLs,
so the single file can be e-mailed, archived or opened offline years later."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinotune.atomic import write_text

__all__ = ["Report", "figure", "fmt", "note", "paragraph", "table", "trust_banners"]

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:0 0 12px;border-bottom:2px solid #e3e6ea;padding-bottom:6px}
section{background:#fff;border-radius:10px;padding:18px 22px;margin:18px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.sub{color:#5f6670;margin:0 0 12px}nav{font-size:14px;line-height:1.9}nav a{margin-right:14px;color:#2457a6}
table{border-collapse:collapse;font-size:14px;margin:6px 0 12px}th,td{padding:4px 12px;text-align:right}
th{background:#eef1f5;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfc}img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#5f6670;font-size:14px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:4px 0 12px}
.card{background:#eef3fb;border-radius:8px;padding:10px 16px;min-width:120px}
.card b{display:block;font-size:22px}.card span{font-size:13px;color:#5f6670}
.banner{background:#fff4e5;border-left:6px solid #e07b00;border-radius:8px;padding:12px 18px;margin:14px 0;
font-size:15px}.banner b{color:#9a4d00}
"""


def fmt(value: Any, digits: int = 3) -> str:
    """Table cell text: None/NaN as '-', floats rounded, everything else as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def percent(value: float) -> str:
    """A share as a percentage that never rounds to a misleading 0% or 100% (99.75% stays 99.75%)."""
    for digits in range(0, 4):
        text = f"{value:.{digits}%}"
        if (text not in (f"{0:.{digits}%}", f"{1:.{digits}%}")) or value in (0.0, 1.0):
            return text
    return f"{value:.4%}"


def table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], digits: int = 3) -> str:
    """An HTML table of `rows` with `columns` {key: header}; missing keys show as '-'."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(row.get(k), digits))}</td>" for k in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(values: Mapping[str, Any]) -> str:
    """Headline numbers as large tiles."""
    tiles = "".join(
        f'<div class="card"><b>{html.escape(fmt(v))}</b><span>{html.escape(k)}</span></div>' for k, v in values.items()
    )
    return f'<div class="cards">{tiles}</div>'


def figure(png: bytes, alt: str, max_width: int | None = None) -> str:
    """An <img> with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    style = f' style="max-width:{max_width}px"' if max_width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{style}>'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


@dataclass
class Section:
    id: str
    title: str
    body: str


@dataclass
class Report:
    """Sections in order; `render` adds a linked table of contents at the top."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    banners: list[tuple[str, str]] = field(default_factory=list)  # (headline, explanation), shown above all

    def warn(self, headline: str, text: str) -> None:
        """A banner at the top: what makes the figures below less than they seem."""
        self.banners.append((headline, text))

    def add(self, section_id: str, title: str, *parts: str) -> None:
        self.sections.append(Section(section_id, title, "\n".join(parts)))

    def render(self) -> str:
        toc = " ".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(
            f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>' for s in self.sections
        )
        banners = "".join(
            f'<div class="banner"><b>{html.escape(h)}</b> {html.escape(t)}</div>' for h, t in self.banners
        )
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body><main>"
            f'<h1>{html.escape(self.title)}</h1><p class="sub">{html.escape(self.subtitle)}</p>'
            f'<div id="banners">{banners}</div><nav>{toc}</nav>\n{body}\n</main></body></html>\n'
        )

    def write(self, path: str | Path) -> Path:
        write_text(path, self.render())
        return Path(path)


TINY = 100  # evaluated images below which a banner says how wide the uncertainty is


MODES = {"linear": "frozen", "finetune": "fine-tuned", "partial": "partly frozen", "lora": "LoRA"}


def model_description(metrics: Mapping[str, Any]) -> str:
    """ "frozen backbone + dpt head" from a run's metrics; what they do not record is left out, not guessed."""
    mode, head = metrics.get("mode"), metrics.get("head")
    model = f"backbone + {head} head" if head else "backbone + head"
    return f"{MODES.get(mode, mode)} {model}" if mode else model


def trust_banners(report: Report, backbone: dict[str, Any], images: int, accuracy: float | None = None) -> None:
    """The two banners a report owes its reader: random backbone weights, and too few images to trust."""
    source = str(backbone.get("source") or "")
    if source.startswith("random:"):
        report.warn(
            "RANDOM WEIGHTS.",
            f"The backbone ({source}) had no pretrained weights: these figures only show that the pipeline "
            "runs, not what DINOv3 can do on these images. Pass a Hugging Face id, a folder or an official .pth.",
        )
    if images < TINY:
        width = ""
        if accuracy is not None:  # normal approximation, floored so that 0 or 1 still shows some width
            half = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1 / images) / images)
            width = f" an accuracy of {accuracy:.2f} is uncertain by about ±{half:.2f} (95%);"
        report.warn(
            "TINY DATASET.",
            f"Only {images} images were evaluated:{width} differences between runs this small are mostly noise.",
        )
