"""`data check` and `data stats`: inspect a dataset without modifying it.

`check_dataset` decodes every file once (in threads; PIL and tifffile release the GIL) because only a
full decode finds truncated files, hashes the raw bytes for duplicates, and returns a `CheckReport`
whose errors mean "training would silently be wrong" and whose warnings mean "look at this".
`compute_stats` samples images to suggest scaling and normalisation values for 16-bit/multi-band data.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinotune.data.decode import decode_raw, load_class_map, read_mask, sniff_format
from dinotune.data.formats import DatasetSpec, load_dataset, segmentation_pairs
from dinotune.data.groups import split_note
from dinotune.data.intensity import Intensity, range_note, valid_mask
from dinotune.data.preflight import MAX_EXAMPLES, channel_problems, class_problems, leakage_problems
from dinotune.data.stats import compute_stats, stats_yaml
from dinotune.errors import DataError

__all__ = ["CheckReport", "Issue", "check_dataset", "compute_stats", "stats_yaml"]
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "all": 3}


@dataclass
class Issue:
    severity: str  # "error" | "warning"
    code: str
    message: str
    files: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    root: str
    layout: str
    task: str
    n_images: int = 0
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> count
    imbalance: float | None = None
    channels: dict[str, int] = field(default_factory=dict)
    bit_depths: dict[str, int] = field(default_factory=dict)
    mask_values: list[int] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_errors"], d["n_warnings"], d["exit_code"] = len(self.errors), len(self.warnings), self.exit_code
        return d

    def format_text(self) -> str:
        """Readable table for the terminal (long issue lists are cut; --json has everything)."""
        lines = [
            f"dinotune data check: {self.root} (layout {self.layout}, task {self.task})",
            f"  images: {self.n_images}  " + "  ".join(f"{k}: {v}" for k, v in self.split_sizes.items()),
        ]
        if self.class_counts:
            splits = list(self.split_sizes)
            width = max(12, *(len(c) for c in self.class_counts))
            lines.append("  " + "class".ljust(width) + "".join(s.rjust(8) for s in [*splits, "total"]))
            for c, per in self.class_counts.items():
                row = [per.get(s, 0) for s in splits]
                lines.append("  " + c.ljust(width) + "".join(str(v).rjust(8) for v in [*row, sum(row)]))
            if self.imbalance is not None:
                lines.append(f"  imbalance (largest/smallest class): 1:{self.imbalance:.1f}")
        if self.channels:
            lines.append(
                "  channels: "
                + ", ".join(f"{k} ({v})" for k, v in self.channels.items())
                + "   bit depth: "
                + ", ".join(f"{k} ({v})" for k, v in self.bit_depths.items())
            )
        if self.mask_values:
            lines.append(f"  mask values: {self.mask_values}")
        for title, items in (("ERRORS", self.errors), ("WARNINGS", self.warnings)):
            if items:
                lines += [f"\n{title} ({len(items)})", *_grouped(items)]
        verdict = "errors found" if self.errors else "OK" + (" (with warnings)" if self.warnings else "")
        lines.append(f"\nResult: {len(self.errors)} error(s), {len(self.warnings)} warning(s) -> {verdict}")
        return "\n".join(lines)


def _grouped(items: list[Issue]) -> list[str]:
    """One line per issue, except codes with many issues: one line with the count and the first files."""
    per_code: dict[str, list[Issue]] = defaultdict(list)
    for it in items:
        per_code[it.code].append(it)
    lines = []
    for code, group in per_code.items():
        if len(group) <= MAX_EXAMPLES:
            lines += [f"  [{code}] {it.message}" for it in group]
            continue
        files = [f for it in group for f in it.files[:1]]
        shown = ", ".join(files[:MAX_EXAMPLES])
        lines.append(f"  [{code}] {len(group)} files, e.g. {shown} (first: {group[0].message}; --json lists all)")
    return lines


@dataclass
class _FileResult:
    path: Path
    code: str | None = None  # error code if the file is bad
    message: str = ""
    sha: str | None = None
    shape: tuple[int, ...] | None = None  # H, W, C
    dtype: str | None = None
    mask_values: np.ndarray | None = None
    info: Intensity | None = None
    value_range: tuple[float, float] | None = None  # min/max of the valid stored values


def _scan(path: Path, is_mask: bool = False, colours: list | None = None) -> _FileResult:
    r = _FileResult(path)
    try:
        data = path.read_bytes()
    except OSError:
        r.code, r.message = "missing", "file does not exist or cannot be read"
        return r
    if not data:
        r.code, r.message = "empty", "file is empty (0 bytes)"
        return r
    r.sha = hashlib.blake2b(data, digest_size=16).hexdigest()
    if sniff_format(path) is None:
        r.code, r.message = "not_image", f"not an image despite the '{path.suffix}' extension"
        return r
    try:
        if is_mask:
            m = read_mask(path, colours)
            r.shape, r.dtype, r.mask_values = (*m.shape, 1), m.dtype.name, np.unique(m)
        else:
            a, r.info, _ = decode_raw(path)
            r.shape, r.dtype = a.shape, a.dtype.name
            valid = valid_mask(a, r.info)
            values = a if valid is None else a[valid]
            if values.size and a.dtype != np.uint8:
                r.value_range = (float(values.min()), float(values.max()))
    except DataError as exc:
        r.code, r.message = "unreadable", str(exc).removeprefix(f"{path}: ")
    return r


def _scan_all(items: list[tuple[Path, bool]], colours: list | None) -> dict[tuple[Path, bool], _FileResult]:
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda it: _scan(it[0], it[1], colours), items))
    return dict(zip(items, results, strict=False))


def check_dataset(
    root: Path | str,
    task: str | None = None,
    layout: str = "auto",
    *,
    patch_size: int = 16,
    num_classes: int | None = None,
    class_map: Path | str | None = None,
    ignore_index: int = 255,
    min_per_class: int = 50,
    max_imbalance: float = 10.0,
    csv_file: Path | str | None = None,
    channels: int | None = 3,
    val_fraction: float = 0.1,
    group_by: str | None = None,
) -> CheckReport:
    """Inspect every file of a dataset and report problems by file name. Never writes anything.

    `channels`, `val_fraction`, `group_by`: the `data.` values it will be read with (channels None: unchecked).
    """
    root = Path(root)
    spec = load_dataset(root, task, layout, csv_file=csv_file, class_map=class_map, auto_split=False,
                        group_by=group_by)  # fmt: skip
    rep = CheckReport(str(root), spec.layout, spec.task)
    base = root if root.is_dir() else root.parent

    def rel(p: Path) -> str:
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)

    def add(sev: str, code: str, msg: str, files: list[Path]) -> None:
        rep.issues.append(Issue(sev, code, msg, [rel(f) for f in files]))

    image_split, mask_of = _image_splits(spec, root, add, rel)
    rep.n_images = len(image_split)
    sizes = Counter(image_split.values())
    rep.split_sizes = {k: sizes[k] for k in sorted(sizes, key=_split_rank)}
    results = _scan_all([(p, False) for p in image_split] + [(m, True) for m in mask_of.values()], spec.colours)

    good = _file_issues(results, patch_size, add, rel)
    _duplicates(results, image_split, spec, add)
    _mixed(good, rep, add)
    _value_ranges(good, add)
    problems = class_problems(spec, val_fraction) + leakage_problems(spec, group_by)
    if note := split_note(spec, group_by):  # unsplit DICOM whose patients the automatic split could part
        add("warning", "groups_not_kept", note, [])
    if channels is not None:
        problems += channel_problems({r.path: r.shape[2] for r in good}, channels, base)
    for p in problems:
        add("error", p.code, p.message, p.files)
    if spec.task in ("classify", "detect"):
        _class_stats(spec, rep, add, min_per_class, max_imbalance)
    if spec.task == "segment":
        n_cls = len(spec.classes) if spec.classes else num_classes
        if class_map and not spec.classes:
            n_cls = len(load_class_map(class_map).names)
        _mask_checks(mask_of, results, n_cls, ignore_index, rep, add, rel)
    return rep


def _split_rank(name: str) -> tuple[bool, int, str]:
    """train, val, test, all first, then other split names alphabetically."""
    return name not in SPLIT_ORDER, SPLIT_ORDER.get(name, 0), name


def _image_splits(spec: DatasetSpec, root: Path, add: Any, rel: Any) -> tuple[dict[Path, str], dict[Path, Path]]:
    """Split of every image, and the mask of every paired image (segmentation; unpaired files reported)."""
    if spec.task != "segment":
        return {s.path: split for split, samples in spec.splits.items() for s in samples}, {}
    image_split: dict[Path, str] = {}
    mask_of: dict[Path, Path] = {}
    for split, (pairs, lonely_images, lonely_masks) in segmentation_pairs(root).items():
        for img in [p for p, _ in pairs] + lonely_images:
            image_split[img] = split
        mask_of.update(dict(pairs))
        for p in lonely_images:
            add("error", "image_without_mask", f"image has no mask: {rel(p)}", [p])
        for p in lonely_masks:
            add("error", "mask_without_image", f"mask has no image: {rel(p)}", [p])
    return image_split, mask_of


def _file_issues(results: dict, patch_size: int, add: Any, rel: Any) -> list[_FileResult]:
    """Report bad and tiny files; return the readable images."""
    good: list[_FileResult] = []
    for (path, is_mask), r in results.items():
        if r.code:
            add("error", r.code, f"{'mask ' if is_mask else ''}{r.message}: {rel(path)}", [path])
        elif not is_mask:
            good.append(r)
            h, w = r.shape[:2]
            if min(h, w) < patch_size:
                add(
                    "warning",
                    "tiny",
                    f"image is {w}x{h}, smaller than one {patch_size}px patch: {rel(path)}",
                    [path],
                )
    return good


def _duplicates(results: dict, image_split: dict[Path, str], spec: DatasetSpec, add: Any) -> None:
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for (path, is_mask), r in results.items():
        if r.sha and not is_mask:
            by_hash[r.sha].append(path)
    for paths in by_hash.values():
        if len(paths) < 2:
            continue
        splits = sorted({image_split[p] for p in paths})
        names = ", ".join(str(p.relative_to(spec.root)) if p.is_relative_to(spec.root) else str(p) for p in paths)
        if len(splits) > 1:
            add(
                "error",
                "duplicate_cross_split",
                f"identical files in splits {'/'.join(splits)} (leakage): {names}",
                paths,
            )
        else:
            extra = " (may leak across splits after the automatic split)" if splits == ["all"] else ""
            add("warning", "duplicate", f"identical files{extra}: {names}", paths)


def _mixed(good: list[_FileResult], rep: CheckReport, add: Any) -> None:
    ch = Counter(r.shape[2] for r in good)
    bits = Counter(r.dtype for r in good)
    rep.channels = {str(k): v for k, v in ch.most_common()}
    rep.bit_depths = {str(k): v for k, v in bits.most_common()}
    for counter, attr, what in ((ch, "channels", "channel counts"), (bits, "dtype", "bit depths")):
        if len(counter) > 1:
            common = counter.most_common(1)[0][0]
            odd = [r.path for r in good if (r.shape[2] if attr == "channels" else r.dtype) != common]
            summary = ", ".join(f"{k}: {v}" for k, v in counter.most_common())
            add(
                "warning",
                f"mixed_{attr if attr == 'channels' else 'bit_depth'}",
                f"mixed {what} ({summary}); minority files e.g. {', '.join(p.name for p in odd[:5])}",
                odd,
            )


def _value_ranges(good: list[_FileResult], add: Any) -> None:
    """Warn, once for all files, about 16-bit files using a sliver of their range and out-of-range floats."""
    narrow = [(r, note) for r in good if r.value_range and (note := range_note(r.value_range[1], r.dtype, r.info))]
    if narrow:
        top = max(r.value_range[1] for r, _ in narrow)
        note = range_note(top, "uint16", Intensity())
        add("warning", "bit_range", f"{note} ({len(narrow)} file(s))", [r.path for r, _ in narrow])
    floats = [r for r in good if r.value_range and r.dtype.startswith("float")]
    wide = [r for r in floats if r.value_range[0] < 0 or r.value_range[1] > 1]
    if wide:
        lo, hi = min(r.value_range[0] for r in wide), max(r.value_range[1] for r in wide)
        add(
            "warning",
            "float_range",
            f"{len(wide)} float raster(s) hold values {lo:g}..{hi:g}, outside [0, 1], and are stretched per image; "
            "run `dinotune data stats` and paste its scaling for dataset-wide values",
            [r.path for r in wide],
        )


def _class_stats(spec: DatasetSpec, rep: CheckReport, add: Any, min_per_class: int, max_imbalance: float) -> None:
    if spec.task == "detect":  # boxes per class, and every annotation problem: dinotune.data.box_check
        from dinotune.data.box_check import box_report

        return box_report(spec.root, rep, add)
    counts: dict[str, dict[str, int]] = {c: {} for c in spec.classes}
    for split, samples in spec.splits.items():
        for s in samples:
            for c in [s.label] if isinstance(s.label, int) else s.label:
                name = spec.classes[c]
                counts[name][split] = counts[name].get(split, 0) + 1
    rep.class_counts = counts
    totals = {c: sum(v.values()) for c, v in counts.items()}
    for c, n in totals.items():
        if n == 0:
            add("warning", "empty_class", f"class {c!r} has no images", [])
        elif n < min_per_class:
            add("warning", "few_images", f"class {c!r} has only {n} images (fewer than {min_per_class})", [])
    present = [n for n in totals.values() if n > 0]
    if len(present) > 1:
        rep.imbalance = max(present) / min(present)
        if rep.imbalance > max_imbalance:
            add(
                "warning",
                "imbalance",
                f"class imbalance 1:{rep.imbalance:.1f} exceeds 1:{max_imbalance:g}; "
                "consider data.class_weights or data.weighted_sampler",
                [],
            )


def _mask_checks(
    mask_of: dict[Path, Path],
    results: dict,
    n_cls: int | None,
    ignore_index: int,
    rep: CheckReport,
    add: Any,
    rel: Any,
) -> None:
    seen: set[int] = set()
    for img, mask in mask_of.items():
        ri, rm = results[(img, False)], results[(mask, True)]
        if ri.code or rm.code:
            continue
        if ri.shape[:2] != rm.shape[:2]:
            add(
                "error",
                "mask_size",
                f"mask is {rm.shape[1]}x{rm.shape[0]} but its image is {ri.shape[1]}x{ri.shape[0]}: {rel(mask)}",
                [mask, img],
            )
        values = [int(v) for v in rm.mask_values]
        seen.update(values)
        if n_cls is not None:
            bad = [v for v in values if v >= n_cls and v != ignore_index]
            if bad:
                add(
                    "error",
                    "mask_values",
                    f"mask has values {bad} outside 0..{n_cls - 1} (and {ignore_index} = ignore): {rel(mask)}",
                    [mask],
                )
    rep.mask_values = sorted(seen)
