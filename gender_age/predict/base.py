"""``ModelPredictor``: the one interface of a model at prediction time, whatever runs it
(``torch_backend.Predictor`` for .tar checkpoints, ``onnx_backend.OnnxPredictor`` for
.onnx files): its task, labels, chip spec and preprocessing from the checked metadata,
batched prediction on squares, and the records of its outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
import numpy as np
from gender_age.data import age_groups
from gender_age.core.checkpointing import CheckpointError
from gender_age.core.images import first_line
from gender_age.nets.ordinal import rank_of, softmax
from gender_age.nets.metadata import ONNX_FORMAT, check_metadata


class ModelPredictor:
    """A model file, checked and ready: uint8 (N,3,R,R) batches -> logits, probabilities, predictions.

    ``task`` is "gender", "age", "exact-age" or "age-gender"; ``chips`` (faces.ChipSpec)
    says how its input is cut around a face (inference.py does it); an exact-age model
    has ``ordinal`` = {"loss", "min_age", "num_ranks"[, "ce_mode"]} and predicts
    min_age + ordinal.rank_of(outputs, loss). An age-gender model (one network, two
    heads) has ``genders`` (names of its first len(genders) outputs, the gender logits),
    ``ordinal`` for the age head's outputs that follow, and ``age_groups`` (ranges of the
    predicted age, ``age_groups.group_of``). Everything the file declares is checked on
    load (``check_metadata``), and a blank image must give ``outputs`` finite values
    (``_probe``). Subclasses load the network and give ``_forward``; batches may be numpy
    arrays or CPU tensors, and results are numpy.
    """
    path: Path
    ckpt: dict

    def _describe(self, info: dict) -> None:
        """Task, classes, preprocessing and ordinal decoding from a checkpoint-like dict (checked)."""
        m = check_metadata(info, self.path)
        self.task, self.classes, self.preset, self.chips = m["task"], m["classes"], m["preset"], m["chips"]
        self.ordinal, self.outputs = m["ordinal"], m["outputs"]
        self.genders, self.age_groups = m["genders"], m["age_groups"]

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N,3,C,C) -> float32 logits (N, outputs)."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Run one blank image through the network: it must accept its declared input and give
        ``outputs`` finite values (an ONNX graph with other metadata than its weights, or
        non-finite weights, fail here)."""
        r = self.preset.resize
        try:
            out = self._forward(self.preset.eval_batch(np.zeros((1, 3, r, r), dtype=np.uint8)))
        except Exception as e:  # noqa: BLE001 - torch and onnxruntime raise many types for a bad graph
            raise CheckpointError(f"{self.path} does not run on its declared {self.preset.crop} px input "
                                  f"({type(e).__name__}: {first_line(e)})") from None
        if tuple(out.shape) != (1, self.outputs):
            what = f"{len(self.genders)} gender logits and the ordinal head" if self.genders else \
                "ordinal head size" if self.ordinal else f"{len(self.classes)} classes"
            raise CheckpointError(f"{self.path} gives {tuple(out.shape)[1:]} outputs per image, but its metadata "
                                  f"declares {self.outputs} ({what}): re-export or retrain it")
        if not np.isfinite(out).all():
            raise CheckpointError(f"{self.path} gives non-finite outputs (NaN or infinity): its weights or "
                                  f"preprocessing are broken; re-export or retrain it")

    @property
    def age_range(self) -> tuple[int, int] | None:
        """(youngest, oldest) age an ordinal age head predicts; None for classifiers."""
        o = self.ordinal
        return None if o is None else (o["min_age"], o["min_age"] + o["num_ranks"] - 1)

    @property
    def key(self) -> str:
        """Name of this model's fields in the output: gender, age, exact_age or age_gender."""
        return str(self.task).replace("-", "_")

    def metadata(self) -> dict[str, str]:
        """What a model file needs besides its weights, as strings (ONNX metadata_props)."""
        meta = {"gac_format": ONNX_FORMAT, "task": str(self.task), "classes": json.dumps(self.classes),
                "preprocess": json.dumps(self.preset.as_dict()), "chips": json.dumps(self.chips.as_dict()),
                "model_args": json.dumps(self.ckpt["model_args"]),
                "input": f"float32 (N,3,{self.preset.crop},{self.preset.crop}): RGB/255, minus mean, over std; "
                         f"the central {self.preset.crop} px of the {self.preset.resize} px face chip that 'chips' "
                         f"describes",
                "output": "logits (N, outputs)"}
        if self.ordinal is not None:
            meta["ordinal"] = json.dumps(self.ordinal)
        if self.genders is not None:
            meta.update(genders=json.dumps(self.genders), age_groups=json.dumps(self.age_groups),
                        output=f"logits (N, outputs): {len(self.genders)} gender logits (softmax over 'genders'), "
                               f"then the '{self.ordinal['loss']}' age head's outputs ('ordinal')")
        return meta

    def view_logits(self, batch, tta: bool = False) -> np.ndarray:
        """uint8 (N,3,R,R) -> float32 logits (V, N, outputs): V=1 (centre crop) or 10 (``tta_batch``)."""
        batch = np.asarray(batch, dtype=np.uint8)
        views = self.preset.tta_batch(batch) if tta else self.preset.eval_batch(batch)[None]
        return np.stack([self._forward(np.ascontiguousarray(v)) for v in views])

    def logits(self, batch) -> np.ndarray:
        """uint8 (N,3,R,R) -> float32 logits (N, outputs)."""
        return self.view_logits(batch)[0]

    def probabilities(self, batch, tta: bool = False) -> np.ndarray:
        """uint8 (N,3,R,R) -> class probabilities (N, C) of a classifier: the softmax, averaged over the views."""
        return softmax(self.view_logits(batch, tta)).mean(0)

    def _ages(self, outputs: np.ndarray) -> list[float | int]:
        """The age head's outputs (N, H), averaged over the views -> N ages: min_age + rank_of.

        Integers, except the expectation of a 'ce' head (ce_mode "expectation"), rounded to 0.1.
        """
        o = self.ordinal
        ranks = rank_of(outputs, o["loss"], o.get("ce_mode") or "argmax")
        if ranks.dtype.kind == "f":
            return [round(float(r) + o["min_age"], 1) for r in ranks]
        return [int(r) + int(o["min_age"]) for r in ranks]

    @staticmethod
    def _labelled(probs: np.ndarray, names: list[str]) -> list[dict]:
        """Probabilities (N, C) -> N {"label", "probability", "probabilities"}."""
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({"label": names[k], "probability": float(p[k]),
                        "probabilities": {c: float(v) for c, v in zip(names, p)}})
        return out

    def predict(self, batch, tta: bool = False) -> list[dict]:
        """uint8 (N,3,R,R) -> N results: {"age"} (exact-age), {"label", "probability",
        "probabilities"} (classifiers), or both and "age_group" (age-gender: the label is the
        gender; the age group is None for an age outside every group)."""
        views = self.view_logits(batch, tta)
        if self.genders is not None:
            g = len(self.genders)
            out = self._labelled(softmax(views[..., :g]).mean(0), self.genders)
            for r, age in zip(out, self._ages(views[..., g:].mean(0))):
                r.update(age=age, age_group=age_groups.group_of(age, self.age_groups))
            return out
        if self.ordinal is not None:
            return [{"age": a} for a in self._ages(views.mean(0))]
        return self._labelled(softmax(views).mean(0), self.classes)
