"""Videos: reading frames (every N-th predicted, the others carried for the annotated
copy) with per-frame size checks, and writing the annotated video (OpenCV).
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from gender_age.core.images import BadImageError, check_image_size
from gender_age.faces.detectors import _cv2
from gender_age.faces.geometry import FaceError
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")


# --------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------

def is_video(path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


class Video:
    """A video file opened with OpenCV: ``fps``, ``size`` (W, H) and ``frames()``.

    Raises FaceError when the file cannot be opened as a video.
    """

    def __init__(self, path):
        cv2 = _cv2()
        self._cv2, self.path = cv2, str(path)
        self.cap = cv2.VideoCapture(self.path)
        if not self.cap.isOpened():
            self.cap.release()
            raise FaceError("cannot open as a video (unreadable, or a codec OpenCV lacks)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if self.size != (0, 0):  # 0 x 0: the container does not say; each frame is checked anyway
            self._check_size(self.size)

    def _check_size(self, size: tuple) -> None:
        """FaceError for frames no image would be allowed to have (images.check_image_size):
        a 12000 x 12000 video would hold gigabytes of frames in flight."""
        try:
            check_image_size(*size)
        except BadImageError as e:
            self.cap.release()
            raise FaceError(f"video frames {e}") from None

    def frames(self, every: int = 1):
        """Yield (index, time in s or None, RGB PIL image, sampled) for every frame, in order;
        ``sampled`` is True for every ``every``-th frame from frame 0. FaceError if none decodes."""
        index = 0
        try:
            while True:
                ok, frame = self.cap.read()
                if not ok:
                    break
                self._check_size((frame.shape[1], frame.shape[0]))
                rgb = Image.fromarray(self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB))
                yield index, (round(index / self.fps, 3) if self.fps > 0 else None), rgb, index % every == 0
                index += 1
        finally:
            self.cap.release()
        if index == 0:
            raise FaceError("no frame could be decoded")


class VideoWriter:
    """Writes RGB PIL frames to an .mp4 (mp4v) or .avi (MJPG) file."""

    def __init__(self, path, fps: float, size: tuple):
        cv2 = _cv2()
        self._cv2 = cv2
        codec = "MJPG" if str(path).lower().endswith(".avi") else "mp4v"
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            raise FaceError(f"cannot write video {path}")

    def write(self, img: Image.Image) -> None:
        self.writer.write(self._cv2.cvtColor(np.asarray(img), self._cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()
