"""Evaluation and resume take their settings from the checkpoint; the recipes,
splits and messages of issue 16 that a user trips over."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from gender_age.data import loading
from gender_age.data import transforms
from gender_age.faces import geometry as faces
from gender_age.train import cli as gac
from gender_age.core import images
from gender_age.predict import units as inference
from gender_age.train import plots
from gender_age.data import samples
from gender_age.train import config as settings
from gender_age.train import trainer
from gender_age.core.checkpointing import CheckpointError, load_checkpoint
from conftest import make_folder_dataset
from gender_age.train.tasks import OrdinalTask
from helpers import age_csvs  # noqa: F401  (fixture)

TINY = ["--no-progress", "--workers", "0", "-b", "8"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def gender_run(tmp_path_factory):
    """A 1-epoch gender run of a small ResNet at 32 px (not the default network)."""
    root = tmp_path_factory.mktemp("gender")
    data = make_folder_dataset(root / "data")
    out = root / "run"
    assert gac.cli([*TINY, "--data-dir", str(data), "--checkpoint-dir", str(out), "-ep", "1", "--arch", "resnet18",
                    "--resize", "40", "--crop", "32", "--ema-epochs", "0", "--lr", "0.01"]) == 0
    return data, out


def test_test_only_takes_the_classifier_from_its_checkpoint(gender_run, tmp_path, capsys):
    data, out = gender_run
    trained = json.loads((out / "test_results.json").read_text())
    # no --arch/--resize/--crop: they come from the checkpoint; no train/ folder is needed
    test_only = tmp_path / "data"
    shutil.copytree(data / "test", test_only / "test")
    evaluated = tmp_path / "eval"
    assert gac.cli([*TINY, "--test-only", "--resume", str(out / "model_best.tar"), "--data-dir", str(test_only),
                    "--checkpoint-dir", str(evaluated)]) == 0
    again = json.loads((evaluated / "test_results.json").read_text())
    assert again["test_acc"] == trained["test_acc"] and again["confusion"] == trained["confusion"]
    assert again["test"]["loss"] == pytest.approx(trained["test"]["loss"], abs=1e-6)
    assert "resnet18 32x32" in capsys.readouterr().out
    # a flag that contradicts the checkpoint: one line, exit 2
    for flags, said in ((["--arch", "levi_hassner", "--crop", "227", "--resize", "256"], "--arch resnet18"),
                        (["--crop", "24"], "--crop 32"), (["-a"], "--task gender")):
        assert gac.cli([*TINY, "--test-only", "--resume", str(out / "model_best.tar"), "--data-dir",
                        str(test_only), "--checkpoint-dir", str(evaluated), *flags]) == 2
        assert said in one_line_error(capsys)


def test_test_only_on_the_validation_split_gives_the_runs_own_validation_figures(gender_run, tmp_path, capsys):
    """--eval-split val draws the run's validation split again (the checkpoint's seed and
    --val-split), so model_best.tar scores there exactly what the run logged for its epoch."""
    data, out = gender_run
    best = load_checkpoint(out / "model_best.tar")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in logged if r["epoch"] == best["epoch"])
    evaluated = tmp_path / "eval"
    argv = [*TINY, "--test-only", "--eval-split", "val", "--resume", str(out / "model_best.tar"),
            "--data-dir", str(data), "--checkpoint-dir", str(evaluated)]
    assert gac.cli(argv) == 0
    got = json.loads((evaluated / "val_results.json").read_text())
    assert got["split"] == "val" and got["val_n"] == 2  # 10% of each class's 6 training images, at least one
    assert got["val_acc"] == pytest.approx(row["val_acc"], abs=1e-9)
    assert got["validation"]["loss"] == pytest.approx(row["val_loss"], abs=1e-6)
    assert (evaluated / "val_confusion.png").exists() and not (evaluated / "test_results.json").exists()
    said = capsys.readouterr().out
    assert "evaluating the validation split, 2 images" in said and "\nval: " in said
    # val without --test-only, or without the training folder: one line, exit 2
    assert gac.cli([*TINY, "--eval-split", "val", "--data-dir", str(data), "--checkpoint-dir",
                    str(tmp_path / "new")]) == 2
    assert "--test-only" in one_line_error(capsys)
    test_only = tmp_path / "data"
    shutil.copytree(data / "test", test_only / "test")
    assert gac.cli([*argv[:-4], "--data-dir", str(test_only), "--checkpoint-dir", str(evaluated)]) == 2
    assert "train" in one_line_error(capsys)


def test_resume_takes_the_run_recipe_from_its_checkpoint(gender_run, tmp_path, capsys):
    data, out = gender_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # only --resume and the new length: network, input size and lr come from the checkpoint
    assert gac.cli([*TINY, "--data-dir", str(data), "--checkpoint-dir", str(run), "--resume", "-ep", "2"]) == 0
    ckpt = load_checkpoint(run / "checkpoint_last.tar")
    assert ckpt["epoch"] == 2 and ckpt["model_args"]["arch"] == "resnet18" and ckpt["preprocess"]["crop"] == 32
    assert ckpt["args"]["lr"] == 0.01 and [r["lr"] for r in ckpt["history"]] == [0.01, 0.01]
    capsys.readouterr()
    assert gac.cli([*TINY, "--data-dir", str(data), "--checkpoint-dir", str(run), "--resume", "-ep", "3",
                    "--lr", "0.02"]) == 2
    assert "--lr 0.01, but this run asks for 0.02" in one_line_error(capsys)


def test_test_only_takes_the_exact_age_model_from_its_checkpoint(age_csvs, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert gac.cli(["--task", "exact-age", "--loss", "corn", "--data-dir", str(age_csvs), "--checkpoint-dir",
                    str(out), "-ep", "2", "--resize", "40", "--crop", "32", *TINY]) == 0
    trained = json.loads((out / "test_results.json").read_text())["test"]
    (age_csvs / "utk_train.csv").unlink()  # evaluation needs no training data
    assert gac.cli(["--task", "exact-age", "--data-dir", str(age_csvs), "--checkpoint-dir", str(out),
                    "--test-only", *TINY]) == 0
    again = json.loads((out / "test_results.json").read_text())["test"]
    assert again["mae"] == pytest.approx(trained["mae"]) and again["n"] == trained["n"]
    capsys.readouterr()
    # the head shapes of ordinal and corn match: decoding with the other rule must be refused, not run
    for flags, said in ((["--loss", "ordinal"], "--loss corn"), (["--resize", "64", "--crop", "64"], "--resize 40"),
                        (["--max-age", "70"], "--max-age 56")):
        assert gac.cli(["--task", "exact-age", "--data-dir", str(age_csvs), "--checkpoint-dir", str(out),
                        "--test-only", *TINY, *flags]) == 2
        assert said in one_line_error(capsys)


def resolved(argv: list[str]):
    args = gac.get_args_parser().parse_args(argv)
    settings.resolve(args, settings.flags_on_command_line(gac.get_args_parser(), argv))
    return args


def test_recipes_fill_the_unset_flags():
    g = resolved([])
    assert (g.arch, g.batch_size, g.epochs, g.optimizer, g.lr, g.lr_step, g.lr_gamma, g.schedule, g.dropout,
            g.ema_epochs, g.val_split) == ("levi_hassner", 64, 64, "adam", 1e-3, 5, 0.9, "step", 0.5, 5.0, 0.1)
    assert resolved(["-sgd"]).optimizer == "sgd" and resolved(["-b", "8", "-ep", "3"]).batch_size == 8
    e = resolved(["--task", "exact-age"])
    assert (e.arch, e.resize, e.crop, e.batch_size, e.epochs, e.optimizer, e.lr, e.weight_decay, e.schedule,
            e.loss, e.ema_epochs, e.dropout) == ("resnet18", 68, 64, 128, 14, "adamw", 2e-3, 0.05, "onecycle",
                                                 "ordinal", 1.0, 0.0)
    p = resolved(["--task", "exact-age", "--recipe", "paper"])
    assert (p.arch, p.resize, p.crop, p.batch_size, p.epochs, p.optimizer, p.lr, p.lr_gamma, p.loss) == \
        ("resnet34", 128, 120, 256, 200, "adam", 5e-4, 1.0, "coral")
    # another network keeps its own input size; given flags always win
    assert (resolved(["--task", "exact-age", "--arch", "resnet34"]).resize, resolved(
        ["--task", "exact-age", "--loss", "corn", "-ep", "3"]).epochs) == (None, 3)


def test_age_splits_honour_the_fraction():
    ages = [20 + (i * 37) % 60 for i in range(120)]  # 60 ages, 2 images each: sparse
    keep, held = samples.stratified_split(ages, 0.1, seed=0, ordered=True)
    assert len(held) == 12 and sorted(keep + held) == list(range(120))
    assert len({ages[i] // 10 for i in held}) >= 5  # spread over the age range, not one corner
    # classes keep their per-class rule (the default gender split: 50 + 50 of 500 + 500)
    keep, held = samples.stratified_split([0] * 500 + [1] * 500, 0.1, seed=0)
    assert len(held) == 100 and sum(1 for i in held if i < 500) == 50


def test_random_split_errors_name_their_own_flag(age_csvs, capsys):  # noqa: F811
    assert gac.cli(["--task", "exact-age", "--data-dir", str(age_csvs), "--random-split", "1.5", *TINY,
                    "--checkpoint-dir", str(age_csvs / "o")]) == 2
    err = one_line_error(capsys)
    assert "--random-split" in err and "--val-split" not in err


def test_one_line_per_epoch_and_no_progress_bar_in_a_log(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "d", n_train=4, n_test=2)
    # no --no-progress: stderr is not a terminal here, so no bar may be drawn
    assert gac.cli(["--workers", "0", "-b", "8", "--data-dir", str(data), "--checkpoint-dir", str(tmp_path / "o"),
                    "-ep", "3", "--eval-every", "5", "--arch", "resnet18", "--resize", "40", "--crop", "32"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch   1/3", "epoch   2/3", "epoch   3/3"]
    assert [" | val " in line for line in lines] == [False, False, True]
    assert "\r" not in captured.err and "it/s" not in captured.err and "batch/s" not in captured.err
    assert sum(line.startswith("test: ") for line in captured.out.splitlines()) == 1
    assert "((" not in captured.out and "))" not in captured.out  # no nested brackets in the data line


def test_a_curve_plot_without_evaluations_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_curves([{"epoch": 1, "train_acc": 0.5}], {"val_acc": "validation"}, tmp_path / "p.png", "acc", "t")
    assert (tmp_path / "p.png").is_file()


class EdgeDetector:
    """A detector whose one face reaches past the top-left corner of the image."""
    geometry = faces.GEOMETRY["mtcnn"]

    def detect(self, rgb):
        return [faces.Face((-30.0, -20.0, 60.0, 90.0), 0.99)]


def test_reported_boxes_are_clipped_but_the_crop_is_framed_on_the_face(tmp_path):
    from PIL import Image
    img = Image.new("RGB", (200, 150), (90, 120, 150))
    (region,) = inference.find_regions(img, "on", EdgeDetector(), 32)
    assert region.box == (0, 0, 60.0, 90.0)
    expected = faces.crop_face(img, faces.crop_square((-30.0, -20.0, 60.0, 90.0), EdgeDetector.geometry))
    assert region.square.tobytes() == images.resize_square(expected, 32).tobytes()


def test_an_empty_evaluation_shard_adds_zeros():
    task = OrdinalTask("coral", 5, 21)
    stats = task.stats(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long))
    assert torch.isfinite(stats).all() and stats.abs().sum() == 0
    full = task.stats(torch.randn(3, 4), torch.tensor([0, 2, 4]))
    assert task.metrics(full + stats) == task.metrics(full)


def test_resume_restores_each_process_its_own_state():
    ranks = [{"running": torch.tensor([1.0]), "torch": torch.get_rng_state(), "aug": torch.Generator().get_state()},
             {"running": torch.tensor([2.0]), "torch": torch.get_rng_state(), "aug": torch.Generator().get_state()}]
    ckpt = {"ranks": ranks, "progress": {"running": torch.tensor([1.0])}, "rng": {}}
    for rank in (0, 1):
        state = {"next_batch": 3, "running": None}
        ctx = {"rank": rank, "world": 2, "aug_gen": torch.Generator(), "device": torch.device("cpu")}
        trainer.restore_rank_state(ckpt, "c.tar", state, ctx)
        assert state["running"].item() == rank + 1  # its own partial statistics, not rank 0's
    with pytest.raises(CheckpointError, match="as many"):
        trainer.restore_rank_state(ckpt, "c.tar", {"next_batch": 3, "running": None},
                                   {"rank": 0, "world": 1, "aug_gen": torch.Generator(),
                                    "device": torch.device("cpu")})


def test_each_process_decodes_its_share(tmp_path):
    found = samples.scan_image_folder(make_folder_dataset(tmp_path / "d", n_train=3, n_test=1) / "train")
    part = loading.CachedImages(found, 16, rank=1, world=2)  # no process group: only its own share
    assert part.paths == found.paths[1::2]
    full = loading.CachedImages(found, 16)
    assert torch.equal(part.images, full.images[1::2])
    mode, why = loading.choose_cache_mode("auto", 1000, 256, processes=10 ** 4)
    assert mode == "stream" and "(" not in why


def test_bf16_needs_an_ampere_gpu(monkeypatch):
    from gender_age.core import runtime
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not runtime.bf16_is_fast(torch.device("cuda", 0))  # Turing reports bf16, but emulates it
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert runtime.bf16_is_fast(torch.device("cuda", 0))


@pytest.mark.parametrize("capability,fast", [("AVX2", False), ("DEFAULT", False), ("AVX512", True)])
def test_cpu_bf16_needs_the_avx512_kernels_in_use(monkeypatch, capability, fast):
    from gender_age.core import runtime
    monkeypatch.setattr(runtime, "cpu_bf16_is_fast", lambda cpuinfo: True)  # an AMX CPU
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert runtime.bf16_is_fast(torch.device("cpu")) is fast


@pytest.mark.parametrize("vendor,flags,fast", [
    ("GenuineIntel", "fpu avx512f avx512_bf16 amx_bf16 amx_tile", True),  # AMX
    ("AuthenticAMD", "fpu avx512f avx512_bf16", True),
    ("GenuineIntel", "fpu avx512f avx512_bf16", False),  # measured 0.68-0.78x of fp32 here
    ("GenuineIntel", "fpu avx2", False), ("AuthenticAMD", "fpu avx2", False)])
def test_cpu_bf16_where_it_was_measured_faster(vendor, flags, fast):
    from gender_age.core import runtime
    cpuinfo = f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert runtime.cpu_bf16_is_fast(cpuinfo) is fast


def test_each_cuda_process_binds_its_gpu_and_reduces_cpu_tensors_over_gloo(monkeypatch):
    from gender_age.core import runtime
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("device", device))
    monkeypatch.setattr(runtime.dist, "init_process_group",
                        lambda backend, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(runtime.dist, "get_world_size", lambda: 2)
    assert runtime.init_distributed(torch.device("cuda", 1)) == (1, 2)
    assert calls["device"] == torch.device("cuda", 1) and calls["backend"] == "cpu:gloo,cuda:nccl"
    assert calls["device_id"] == torch.device("cuda", 1)


def test_strong_augmentation_resizes_float_tensors(monkeypatch):
    """Antialiased bilinear interpolation has no uint8 kernel on CUDA."""
    seen = []
    real = torch.nn.functional.interpolate

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return real(x, *a, **k)

    monkeypatch.setattr(transforms.F, "interpolate", spy)
    batch = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    out = transforms.Preset(40, 32).train_batch_strong(batch, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen and all(d == torch.float32 for d in seen)


def test_measuring_the_framing_leaves_a_seeded_run_unchanged(tmp_path):
    """The detector that measures the training images' framing is built from torch's
    random generator: a seeded run must train the same with or without it."""
    data = make_folder_dataset(tmp_path / "d", n_train=4, n_test=2)
    states = []
    for sample in ("0", "8"):
        out = tmp_path / f"o{sample}"
        assert gac.cli([*TINY, "--data-dir", str(data), "--checkpoint-dir", str(out), "-ep", "1", "--arch",
                        "resnet18", "--resize", "40", "--crop", "32", "--framing-sample", sample]) == 0
        states.append(load_checkpoint(out / "checkpoint_last.tar"))
    assert states[0]["iter_losses"] == states[1]["iter_losses"]
    assert all(torch.equal(v, states[1]["train_state"][k]) for k, v in states[0]["train_state"].items())
