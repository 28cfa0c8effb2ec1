"""``--annotate OUT_DIR``: copies of the inputs with each face's box and labels drawn,
images as they come and videos frame by frame, never over a file it did not write.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from PIL import Image
from gender_age.faces import drawing
from gender_age.faces import videos
from gender_age.core.checkpointing import atomic_write
from gender_age.predict.units import Unit
from gender_age.predict.escaping import OutputError, printable

ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def face_label(result: dict | None, predictors: dict) -> str:
    """'male 0.97  young 0.81  age 27' for one region's results (an age-gender model's:
    'male 0.97  age 27  young')."""
    if result is None:
        return ""
    parts = []
    for key in predictors:
        r = result[key]
        if "label" in r:
            parts.append(f"{r['label']} {r['probability']:.2f}")
        if "age" in r:
            parts.append(f"age {r['age']}")
        if r.get("age_group"):
            parts.append(r["age_group"])
    return "  ".join(parts)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


class Annotator:
    """Writes annotated copies into ``out_dir``: images as they come, videos frame by frame
    (frames between sampled ones keep the last boxes). File names are kept; a name that is
    taken (an input, a file this run wrote, or any file already there) gets -1, -2..., and a
    clash with a file this run did not write is reported on stderr. Every file is written to
    a temporary name in ``out_dir`` and renamed: a failure or an interrupt leaves no half file."""

    def __init__(self, out_dir: str | os.PathLike, inputs: list[str], warn=_warn):
        self.out, self.warn = Path(out_dir), warn
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--annotate folder {printable(self.out)} cannot be created ({e.strerror or e})") from None
        self.inputs = {Path(p).resolve() for p in inputs}
        self.created: set[Path] = set()
        self.video = None  # [input path, writer, temporary path, final path, last labels]

    def _target(self, path: str, suffix: str) -> Path:
        stem = Path(path).stem
        natural = target = self.out / f"{stem}{suffix}"
        n, foreign = 0, False
        while target.resolve() in self.inputs | self.created or os.path.lexists(target):
            foreign = foreign or target.resolve() not in self.created
            n += 1
            target = self.out / f"{stem}-{n}{suffix}"
        self.created.add(target.resolve())
        if foreign:
            self.warn(f"warning: {printable(natural)} already exists: writing {printable(target)} instead")
        return target

    def add(self, unit: Unit, labelled: list[tuple]) -> None:
        """``labelled``: (box, text) of each region with a box."""
        if unit.image is None:
            return
        if unit.frame is None:
            self._finish_video()
            suffix = Path(unit.file).suffix.lower()
            target = self._target(unit.file, suffix if suffix in ANNOTATE_SUFFIXES else ".png")
            self._write_image(drawing.draw_faces(unit.image, labelled), target)
            return
        if self.video is None or self.video[0] != unit.file:
            self._finish_video()
            self._start_video(unit)
        if unit.sampled:
            self.video[4] = labelled
        self.video[1].write(drawing.draw_faces(unit.image, self.video[4]))

    @staticmethod
    def _write_image(img: Image.Image, target: Path) -> None:
        try:
            with atomic_write(target) as f:
                img.save(f, format=Image.registered_extensions()[target.suffix])
        except OSError as e:
            raise OutputError(f"cannot write {printable(target)} ({e.strerror or e})") from None

    def _start_video(self, unit: Unit) -> None:
        final = self._target(unit.file, ".avi" if unit.file.lower().endswith(".avi") else ".mp4")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=self.out)
            os.close(fd)
        except OSError as e:
            raise OutputError(f"cannot write {printable(final)} ({e.strerror or e})") from None
        try:
            writer = videos.VideoWriter(tmp, unit.fps or 25.0, unit.image.size)
        except BaseException:
            os.unlink(tmp)
            raise
        self.video = [unit.file, writer, Path(tmp), final, []]

    def _finish_video(self) -> None:
        if self.video is not None:
            _, writer, tmp, final, _ = self.video
            self.video = None
            writer.close()
            try:
                os.replace(tmp, final)
            except OSError as e:
                raise OutputError(f"cannot write {printable(final)} ({e.strerror or e})") from None

    def close(self) -> None:
        self._finish_video()

    def abort(self) -> None:
        """Drop the video in progress (after an error or an interrupt): no half file is left."""
        if self.video is not None:
            _, writer, tmp, _, _ = self.video
            self.video = None
            writer.close()
            tmp.unlink(missing_ok=True)
