"""Training under bad input, unwritable outputs and crashes during writes."""
from __future__ import annotations

import shutil

import pytest

from gender_age.core import checkpointing
from gender_age.train import cli as gac
from gender_age.core.checkpointing import atomic_torch_save, load_checkpoint

FAST = ["--no-progress", "--workers", "0", "-b", "8", "-ep", "1", "--arch", "resnet18", "--resize", "40", "--crop", "32",
        "--ema-epochs", "0"]  # EMA off: see tests/test_train.py LIGHT


def train(data, out, *extra):
    return gac.cli([*FAST, "--data-dir", str(data), "--checkpoint-dir", str(out), *map(str, extra)])


def _add_bad_files(root, n=2):
    names = []
    for i in range(n):
        p = root / "train" / ("male" if i % 2 else "female") / f"bad_{i}.jpg"
        p.write_bytes(b"" if i % 2 else b"GIF89a-not-really")
        names.append(p.name)
    (root / "train" / "male" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "female" / "._female_0.jpg").write_bytes(b"\0\5\26\7junk")
    return names


def test_bad_images_are_skipped_with_one_warning(tiny_data, tmp_path, capsys):
    names = _add_bad_files(tiny_data)
    assert train(tiny_data, tmp_path / "c") == 0
    out = capsys.readouterr().out
    warning = [l for l in out.splitlines() if l.startswith("warning:")]
    assert len(warning) == 1 and "skipped 2 unreadable" in warning[0]
    assert all(n in warning[0] for n in names)
    assert ".DS_Store" not in out and "._female_0" not in out  # hidden files are not images at all


def test_many_bad_images_are_listed_in_a_file(tiny_data, tmp_path, capsys):
    _add_bad_files(tiny_data, n=8)
    assert train(tiny_data, tmp_path / "c") == 0
    assert "listed in" in capsys.readouterr().out
    listing = (tmp_path / "c" / "skipped_images.csv").read_text().splitlines()
    assert listing[0] == "path,reason" and len(listing) == 9


def test_strict_makes_bad_images_an_error(tiny_data, tmp_path, capsys):
    _add_bad_files(tiny_data)
    assert train(tiny_data, tmp_path / "c", "--strict") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 2 unreadable image(s)") and len(err.splitlines()) == 1


def test_streaming_mode_skips_bad_images_too(tiny_data, tmp_path, capsys):
    _add_bad_files(tiny_data)
    assert train(tiny_data, tmp_path / "c", "--cache", "stream") == 0
    assert "skipped 2 unreadable" in capsys.readouterr().out


@pytest.mark.parametrize("case,match", [
    ("missing_train", "train folder .* not found: create it"),
    ("missing_test", "test folder .* not found"),
    ("single_class", "at least 2"),
    ("empty_class", "has no images"),
    ("all_bad_in_a_class", "fewer than 2 classes have readable"),
])
def test_structural_problems_are_one_line_errors(tiny_data, tmp_path, capsys, case, match):
    if case == "missing_train":
        shutil.rmtree(tiny_data / "train")
    elif case == "missing_test":
        shutil.rmtree(tiny_data / "test")
    elif case == "single_class":
        shutil.rmtree(tiny_data / "train" / "male")
    elif case == "empty_class":
        for f in (tiny_data / "train" / "male").iterdir():
            f.unlink()
    else:
        for f in (tiny_data / "train" / "male").iterdir():
            f.write_bytes(b"")
    assert train(tiny_data, tmp_path / "c") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    import re
    assert re.search(match, err), err


def test_unwritable_checkpoint_dir_is_detected_before_training(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert train(tiny_data, blocker / "sub") == 2
    err = capsys.readouterr().err
    assert "not writable" in err and "--checkpoint-dir" in err


def test_full_disk_is_detected_before_training(tiny_data, tmp_path, capsys, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(checkpointing.os, "statvfs", lambda p: Tiny)
    assert train(tiny_data, tmp_path / "c") == 2
    assert "MiB free" in capsys.readouterr().err


def test_a_crash_while_saving_keeps_the_previous_file(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "c"
    assert train(tiny_data, out) == 0
    before = (out / "model_best.tar").read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpointing.os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"x": 1}, out / "model_best.tar")
    assert (out / "model_best.tar").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no litter
    monkeypatch.undo()
    assert load_checkpoint(out / "model_best.tar")["task"] == "gender"


def test_bad_numbers_are_one_line_errors(tiny_data, tmp_path, capsys):
    assert gac.cli(["--no-progress", "--data-dir", str(tiny_data), "--checkpoint-dir", str(tmp_path), "-b", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert train(tiny_data, tmp_path / "c", "--val-split", "1.5") == 2
    assert "--val-split" in capsys.readouterr().err


def test_every_awkward_input_in_training(tiny_data, tmp_path, capsys):
    from conftest import make_bad_input_zoo
    zoo = make_bad_input_zoo(tiny_data / "train" / "male", cls=1)
    out = tmp_path / "c"
    assert train(tiny_data, out, "--val-split", "0") == 0
    text = capsys.readouterr().out
    warning = [l for l in text.splitlines() if l.startswith("warning:")]
    assert len(warning) == 1 and f"skipped {len(zoo['bad'])} unreadable" in warning[0]
    assert all(name in warning[0] for name in zoo["bad"])
    assert not any(name in warning[0] for name in zoo["good"] + zoo["ignored"])
    # 6 generated + the good awkward ones train with the 6 female images
    assert f"images used: train {12 + len(zoo['good'])}," in text
