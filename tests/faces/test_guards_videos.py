"""Videos: every decoded frame is size-checked, not only the size the container declares
(a container may under-report it, or say nothing)."""
from __future__ import annotations

import pytest
from PIL import Image

from gender_age.core import images
from gender_age.faces import videos
from gender_age.faces.geometry import FaceError


def small_video(path, n=3, size=(64, 48)):
    writer = videos.VideoWriter(path, 10.0, size)
    for i in range(n):
        writer.write(Image.new("RGB", size, (40 * i, 80, 120)))
    writer.close()
    return path


def test_frames_within_the_limits_decode(tmp_path):
    video = videos.Video(small_video(tmp_path / "v.mp4"))
    assert [(i, img.size, sampled) for i, _, img, sampled in video.frames(2)] == \
        [(0, (64, 48), True), (1, (64, 48), False), (2, (64, 48), True)]


def test_each_frame_is_checked_even_when_the_container_passed(tmp_path, monkeypatch):
    video = videos.Video(small_video(tmp_path / "v.mp4"))  # the declared size is within the limits
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 48 - 1)  # ... but the frames are not
    with pytest.raises(FaceError, match="video frames refused: 64x48 pixels is over"):
        list(video.frames())


def test_a_container_size_over_the_limit_is_refused_at_open(tmp_path, monkeypatch):
    path = small_video(tmp_path / "v.mp4")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(FaceError, match="video frames refused"):
        videos.Video(path)
