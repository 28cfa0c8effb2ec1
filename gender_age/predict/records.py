"""What prediction writes: records (one per face, with every model's fields)
streamed as text, JSON or CSV while units finish. Every name and label goes out
through ``escaping`` (control characters, formulas, the stream's encoding).
"""
from __future__ import annotations

import csv
import io
import json
import textwrap
from gender_age.faces import videos as faces
from gender_age.predict.units import Unit
from gender_age.predict.base import ModelPredictor
from gender_age.predict.escaping import OutputError, SafeWriter, csv_text, printable  # noqa: F401 (re-exported)

MAX_FILE_WIDTH = 60  # text output pads file names up to this many characters


def field_names(p: ModelPredictor, single: bool) -> dict[str, str]:
    """{key of the model's result (ModelPredictor.predict): its field in the records}, in record order.

    A single model: label, probability, probabilities (a classifier), age (exact age), or gender,
    gender_probability, gender_probabilities, age, age_group (an age-gender model). Several
    models: named after the model (gender, gender_probability, gender_probabilities, ...,
    exact_age; age_gender_gender, age_gender_gender_probability, ..., age_gender_age_group)."""
    pre = "" if single else f"{p.key}_"
    if p.genders is not None:
        return {"label": f"{pre}gender", "probability": f"{pre}gender_probability",
                "probabilities": f"{pre}gender_probabilities", "age": f"{pre}age", "age_group": f"{pre}age_group"}
    if p.ordinal is not None:
        return {"age": "age" if single else p.key}
    return {"label": "label" if single else p.key, "probability": f"{pre}probability",
            "probabilities": f"{pre}probabilities"}


def label_names(p: ModelPredictor) -> list[str]:
    """The names a model's label and probabilities are over: its genders or its classes."""
    return p.classes if p.genders is None else p.genders


def model_fields(p: ModelPredictor, result: dict | None, single: bool) -> dict:
    """One model's result as record fields (none for a region without a face)."""
    if result is None:
        return {}
    out = {}
    for key, name in field_names(p, single).items():
        value = result[key]
        if key == "probability":
            value = round(value, 6)
        elif key == "probabilities":
            value = {c: round(v, 6) for c, v in value.items()}
        out[name] = value
    return out


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


def flat_row(r: dict) -> dict:
    """A record as CSV cells: box -> x0,y0,x1,y1; <prefix>probabilities -> <prefix>p_<class>;
    text cells through ``csv_text``."""
    out = {}
    for k, v in r.items():
        if k == "box":
            out.update(zip(("x0", "y0", "x1", "y1"), v or ["", "", "", ""]))
        elif k.endswith("probabilities"):
            pre = k[: -len("probabilities")]
            out.update({f"{pre}p_{printable(c)}": f"{x:.4f}" for c, x in v.items()})
        elif k.endswith("probability"):
            out[k] = f"{v:.4f}"
        else:
            out[k] = "" if v is None else csv_text(v) if isinstance(v, str) else v
    return out


def model_cells(r: dict, p: ModelPredictor, single: bool, pad: bool = False) -> list[str]:
    """['male 0.973'], ['27'] or ['male 0.973', '27', 'young']: one model's result in a record, for
    text output (an age outside every group: '-'). ``pad``: the label and age in fixed widths."""
    f = field_names(p, single)
    cells = []
    if "label" in f:
        label = printable(r[f["label"]])
        cells.append(f"{label.ljust(10) if pad else label} {r[f['probability']]:.3f}")
    if "age" in f:
        cells.append(printable(r[f["age"]]).ljust(5 if pad else 0))
    if "age_group" in f:
        cells.append(printable(r[f["age_group"]] or "-"))
    return cells


class RecordStream:
    """Prints records as they come, in one layout for the whole run.

    fmt "text": ``file label probability`` lines (``file age``; ``file gender probability age
    age_group`` for an age-gender model) for one model on whole images,
    else a table with a header, in fixed-width columns (the file column as wide as the longest
    input name, at most MAX_FILE_WIDTH); "csv": a header, then one row per record; "json": a
    list of records, closed by ``close``. ``located`` (face index and box columns) is known up
    front, or None (--detect auto): whole-image records are then held until a detected face
    makes the table necessary, or until ``close`` prints them without locations.
    """

    def __init__(self, out: SafeWriter, fmt: str, predictors: dict, paths: list[str], located: bool | None):
        self.out, self.fmt, self.predictors, self.located = out, fmt, predictors, located
        self.single = len(predictors) == 1
        self.frames = any(faces.is_video(p) for p in paths)
        self.width = min(max([len(printable(p)) for p in paths] + [4]), MAX_FILE_WIDTH)
        self.held, self.count, self._widths = [], 0, []

    def add(self, records: list[dict]) -> None:
        if self.located is None:
            if all(r["source"] == "whole image" for r in records):
                self.held += records
                return
            self.located = True
        self._print(self.held + records)
        self.held = []

    def close(self) -> None:
        """Print what is held (after an interrupt too) and close a JSON list. With no record at
        all, JSON is still a list (``[]``) and CSV still has its header."""
        if self.located is None:
            self.located = False
        self._print(self.held)
        self.held = []
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "[]\n")
        elif self.fmt == "csv" and not self.count:
            self.out.write(self._header())

    def _print(self, records: list[dict]) -> None:
        if not records:
            return
        parts = [] if self.count else [self._header()]
        for r in records:
            if not self.located:
                r = {k: v for k, v in r.items() if k not in LOCATION_KEYS}
            parts.append(self._format(r))
            self.count += 1
        self.out.write("".join(parts))

    def _plain(self) -> bool:
        return self.single and not self.located

    def _header(self) -> str:
        self._widths = [w for _, w in self._text_columns()]  # the layout is final from the first record on
        if self.fmt == "json":
            return "[\n"
        if self.fmt == "csv":
            return self._csv_line(self._csv_columns())
        return "" if self._plain() else self._text_line([name for name, _ in self._text_columns()])

    def _format(self, r: dict) -> str:
        if self.fmt == "json":
            return ("" if self.count == 0 else ",\n") + textwrap.indent(json.dumps(r, indent=2), "  ")
        if self.fmt == "csv":
            row = flat_row(r)
            return self._csv_line([row.get(c, "") for c in self._csv_columns()])
        file = printable(r["file"]).ljust(self.width)
        if self._plain():
            (p,) = self.predictors.values()
            return "  ".join([file, *model_cells(r, p, True, pad=True)]).rstrip() + "\n"
        cells = [r["file"]]
        if self.frames:
            cells += [r.get("frame", ""), "" if r.get("time") is None else f"{r['time']:.3f}"]
        if self.located:
            cells += ["-" if r["face"] is None else r["face"], ",".join(map(str, r["box"] or [])) or "-"]
        if self.located and r["source"] == "no face found":
            cells.append("(no face found)")
        else:
            cells += [c for p in self.predictors.values() for c in model_cells(r, p, self.single)]
        return self._text_line(cells)

    def _text_columns(self) -> list[tuple[str, int]]:
        """(header, width) of the table's columns, fixed before the first row."""
        cols = [("file", self.width)]
        if self.frames:
            cols += [("frame", 5), ("time", 7)]
        if self.located:
            cols += [("face", 4), ("box", 19)]
        for p in self.predictors.values():
            f = field_names(p, self.single)
            if "label" in f:
                name = p.key if p.genders is None else f["label"]
                cols.append((name, max(len(name), max(len(printable(c)) for c in label_names(p)) + 6)))
            if "age" in f:
                cols.append((f["age"], max(5, len(f["age"]))))
            if "age_group" in f:
                cols.append((f["age_group"], max([len(f["age_group"])] + [len(printable(g["name"]))
                                                                           for g in p.age_groups])))
        return cols

    def _text_line(self, cells: list) -> str:
        widths = self._widths + [0] * len(cells)
        return "  ".join(printable(c).ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n"

    def _csv_columns(self) -> list[str]:
        cols = ["file"] + (["frame", "time"] if self.frames else [])
        if self.located:
            cols += ["face", "x0", "y0", "x1", "y1", "score", "source"]
        for p in self.predictors.values():
            for key, name in field_names(p, self.single).items():
                if key == "probabilities":
                    pre = name[: -len("probabilities")]
                    cols += [f"{pre}p_{printable(c)}" for c in label_names(p)]
                else:
                    cols.append(name)
        return cols

    @staticmethod
    def _csv_line(cells: list) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow(cells)
        return buf.getvalue()
