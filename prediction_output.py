"""What prediction writes: records (one per face, with every model's fields)
as text, JSON or CSV, and annotated copies of the images and videos.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from PIL import Image

import faces
from inference import Unit
from predictor import Predictor
from samples import DatasetError

ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def field_names(p: Predictor, single: bool) -> tuple[str, str | None, str | None]:
    """(label or age field, probability field, probabilities field) of a model in the records:
    label/probability/probabilities (or age) for a single model; named after the model when
    several are combined (gender, gender_probability, gender_probabilities, ..., exact_age)."""
    if p.ordinal is not None:
        return ("age" if single else p.key), None, None
    pre = "" if single else f"{p.key}_"
    return ("label" if single else p.key), f"{pre}probability", f"{pre}probabilities"


def model_fields(p: Predictor, result: dict | None, single: bool) -> dict:
    """One model's result as record fields (none for a region without a face)."""
    if result is None:
        return {}
    label, prob, probs = field_names(p, single)
    if prob is None:
        return {label: result["age"]}
    return {label: result["label"], prob: round(result["probability"], 6),
            probs: {c: round(v, 6) for c, v in result["probabilities"].items()}}


def unit_records(unit: Unit, results: list, predictors: dict) -> list[dict]:
    """The records of one image or frame: one per region, with every model's fields."""
    base = {"file": unit.file}
    if unit.frame is not None:
        base.update(frame=unit.frame, time=unit.time)
    records = []
    for g, res in zip(unit.regions, results):
        rec = dict(base, face=g.face, box=None if g.box is None else [round(v) for v in g.box],
                   score=None if g.score is None else round(g.score, 4), source=g.source)
        for key, p in predictors.items():
            rec.update(model_fields(p, res and res[key], len(predictors) == 1))
        records.append(rec)
    return records


LOCATION_KEYS = ("face", "box", "score", "source")


def is_located(records: list[dict]) -> bool:
    """Whether face locations matter: something came from the detector, or a video."""
    return any(r["source"] != "whole image" or "frame" in r for r in records)


def strip_location(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in LOCATION_KEYS} for r in records]


def flat_row(r: dict) -> dict:
    """A record as CSV cells: box -> x0,y0,x1,y1; <prefix>probabilities -> <prefix>p_<class>."""
    out = {}
    for k, v in r.items():
        if k == "box":
            out.update(zip(("x0", "y0", "x1", "y1"), v or ["", "", "", ""]))
        elif k.endswith("probabilities"):
            pre = k[: -len("probabilities")]
            out.update({f"{pre}p_{c}": f"{x:.4f}" for c, x in v.items()})
        elif k.endswith("probability"):
            out[k] = f"{v:.4f}"
        else:
            out[k] = "" if v is None else v
    return out


def model_cell(r: dict, p: Predictor, single: bool) -> str:
    """'male 0.973' or '27': one model's result in a record, for text output."""
    label, prob, _ = field_names(p, single)
    return str(r[label]) if prob is None else f"{r[label]} {r[prob]:.3f}"


def text_table(records: list[dict], predictors: dict) -> str:
    """A readable table with a header: file, [frame, time], [face, box], one column per model."""
    single = len(predictors) == 1
    frames = any("frame" in r for r in records)
    located = "face" in records[0]
    rows = [["file"] + (["frame", "time"] if frames else []) + (["face", "box"] if located else [])
            + [field_names(p, single)[0] if p.ordinal is not None else p.key for p in predictors.values()]]
    for r in records:
        row = [r["file"]]
        if frames:
            row += [str(r.get("frame", "")), "" if r.get("time") is None else f"{r['time']:.3f}"]
        if located:
            row += ["-" if r["face"] is None else str(r["face"]), ",".join(map(str, r["box"] or [])) or "-"]
        if located and r["source"] == "no face found":
            row.append("(no face found)")
        else:
            row += [model_cell(r, p, single) for p in predictors.values()]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def format_records(records: list[dict], as_json: bool, as_csv: bool, predictors: dict) -> str:
    """Records -> JSON, CSV, or text: ``file label probability`` lines for one model on whole
    images (the first predict.py's output), else a table with a header."""
    if as_json:
        return json.dumps(records, indent=2) + "\n"
    if as_csv:
        rows = [flat_row(r) for r in records]
        buf = io.StringIO()
        w = csv.DictWriter(buf, list(dict.fromkeys(k for row in rows for k in row)), restval="")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if len(predictors) > 1 or "face" in records[0]:
        return text_table(records, predictors)
    (p,) = predictors.values()
    width = max([len(r["file"]) for r in records] + [4])
    if p.ordinal is not None:
        return "".join(f"{r['file']:<{width}}  {r['age']}\n" for r in records)
    return "".join(f"{r['file']:<{width}}  {r['label']:<10} {r['probability']:.3f}\n" for r in records)


def face_label(result: dict | None, predictors: dict) -> str:
    """'male 0.97  young 0.81  age 27' for one region's results."""
    if result is None:
        return ""
    parts = []
    for key, p in predictors.items():
        r = result[key]
        parts.append(f"age {r['age']}" if "age" in r else f"{r['label']} {r['probability']:.2f}")
    return "  ".join(parts)


def _partial(final: Path) -> Path:
    """A hidden name beside ``final`` to write to before renaming (a crash leaves no half file)."""
    return final.with_name(f".{final.stem}.partial{final.suffix}")


class Annotator:
    """Writes annotated copies into ``out_dir``: images as they come, videos frame by frame
    (frames between sampled ones keep the last boxes). File names are kept; a clash gets -1, -2..."""

    def __init__(self, out_dir: str | os.PathLike, inputs: list[str]):
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"--annotate folder {self.out} cannot be created ({e.strerror or e})") from None
        self.taken = {Path(p).resolve() for p in inputs}
        self.video = None  # (input path, writer, partial path, final path, last labels)

    def _target(self, path: str, suffix: str) -> Path:
        stem = Path(path).stem
        target, n = self.out / f"{stem}{suffix}", 0
        while target.resolve() in self.taken:
            n += 1
            target = self.out / f"{stem}-{n}{suffix}"
        self.taken.add(target.resolve())
        return target

    def add(self, unit: Unit, labelled: list[tuple]) -> None:
        """``labelled``: (box, text) of each region with a box."""
        if unit.image is None:
            return
        if unit.frame is None:
            self._finish_video()
            suffix = Path(unit.file).suffix.lower()
            target = self._target(unit.file, suffix if suffix in ANNOTATE_SUFFIXES else ".png")
            partial = _partial(target)
            faces.draw_faces(unit.image, labelled).save(partial, format=Image.registered_extensions()[target.suffix])
            os.replace(partial, target)
            return
        if self.video is None or self.video[0] != unit.file:
            self._finish_video()
            suffix = ".avi" if unit.file.lower().endswith(".avi") else ".mp4"
            final = self._target(unit.file, suffix)
            partial = _partial(final)
            self.video = [unit.file, faces.VideoWriter(partial, unit.fps or 25.0, unit.image.size), partial, final, []]
        if unit.sampled:
            self.video[4] = labelled
        self.video[1].write(faces.draw_faces(unit.image, self.video[4]))

    def _finish_video(self) -> None:
        if self.video is not None:
            _, writer, partial, final, _ = self.video
            writer.close()
            os.replace(partial, final)
            self.video = None

    def close(self) -> None:
        self._finish_video()
