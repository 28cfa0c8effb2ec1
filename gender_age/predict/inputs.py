"""What predict.py runs on: the image and video files among its inputs.

Needs neither torch nor OpenCV, so predict.py can list its inputs (and start
its decode pool, decode_pool.py) before it loads either.
"""
from __future__ import annotations

from pathlib import Path

from gender_age.faces import videos as faces
from gender_age.core.images import IMG_EXTENSIONS, is_hidden, is_image_file, walk_files
from gender_age.data.samples import DatasetError


def is_input_file(name: str) -> bool:
    """An image or a video (not hidden): what a folder given to predict.py is searched for."""
    return is_image_file(name) or (not is_hidden(name) and faces.is_video(name))


def collect_inputs(inputs: list[str]) -> list[str]:
    """Files as given (any suffix: a bad one is reported later), folders searched at any depth
    for images and videos."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = walk_files(p, is_input_file)
            if not found:
                raise DatasetError(f"folder {p} has no images ({', '.join(IMG_EXTENSIONS[:4])}, ...) "
                                      f"or videos ({', '.join(faces.VIDEO_EXTENSIONS[:2])}, ...)")
            paths += [str(f) for f in found]
        elif p.exists() or p.is_symlink():
            paths.append(str(p))
        else:
            raise DatasetError(f"{p} does not exist")
    return paths
