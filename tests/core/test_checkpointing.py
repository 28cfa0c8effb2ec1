"""checkpointing.py by known values: atomic writes (permissions, nothing half-written), the
checks of a folder before training, safe loading and each refusal's message, and what a
fine-tuning start copies."""
from __future__ import annotations

import os
import pickle
import re
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from helpers import record_probe_folders
from gender_age.core import checkpointing as ck
from gender_age.core.checkpointing import CheckpointError


def refused(message: str):
    return pytest.raises(CheckpointError, match="^" + re.escape(message) + "$")


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_current_umask_with_and_without_proc(umask_027, monkeypatch):
    assert ck.current_umask() == 0o027
    monkeypatch.setattr(ck, "open", lambda *a, **k: (_ for _ in ()).throw(OSError("no /proc")), raising=False)
    assert ck.current_umask() == 0o027 and os.umask(0o027) == 0o027  # read, and left as it was


def test_atomic_write_makes_folders_and_gives_the_umask_permissions(tmp_path, umask_027):
    target = tmp_path / "a" / "b" / "out.txt"
    ck.atomic_write_text(target, "hello")
    assert target.read_text() == "hello" and (target.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with ck.atomic_write(target) as f:
            f.write(b"new, half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_torch_save_writes_every_path_or_none(tmp_path):
    ck.atomic_torch_save({"x": torch.arange(3)}, tmp_path / "a.tar", tmp_path / "b.tar")
    for name in ("a.tar", "b.tar"):
        assert torch.load(tmp_path / name, weights_only=True)["x"].tolist() == [0, 1, 2]
    with pytest.raises(Exception):
        ck.atomic_torch_save({"f": lambda: 0}, tmp_path / "c.tar")  # cannot be pickled
    assert not (tmp_path / "c.tar").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]


def test_check_writable(tmp_path, monkeypatch):
    ck.check_writable(tmp_path / "new" / "run", need_bytes=1)
    assert (tmp_path / "new" / "run").is_dir() and list((tmp_path / "new" / "run").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match=rf"^checkpoint folder {re.escape(str(tmp_path / 'file'))} is not "
                                              r"writable \(.+\): choose another with --checkpoint-dir$"):
        ck.check_writable(tmp_path / "file")
    Stat = namedtuple("Stat", "f_bavail f_frsize")
    monkeypatch.setattr(ck.os, "statvfs", lambda _: Stat(100, 1 << 20))  # 100 MiB free
    ck.check_writable(tmp_path, need_bytes=100 << 20)
    with refused(f"checkpoint folder {tmp_path} has 100 MiB free, need at least 200 MiB: free space or use "
                 f"--checkpoint-dir"):
        ck.check_writable(tmp_path, need_bytes=200 << 20)


def test_load_checkpoint_refusals(tmp_path):
    with refused(f"checkpoint {tmp_path / 'no.tar'} not found: train one first (python gender_age_classifier.py) "
                 f"or pass --checkpoint PATH"):
        ck.load_checkpoint(tmp_path / "no.tar")
    torch.save({"weight": torch.ones(1)}, tmp_path / "w.tar")
    message = (f"{tmp_path / 'w.tar'} is not a checkpoint of this toolkit (no model_state/model_args): weights-only "
               f"files cannot be used, retrain or re-save it")
    with refused(message):
        ck.load_checkpoint(tmp_path / "w.tar")
    for partial in ({"model_state": {}}, {"model_args": {}}, [1, 2]):
        torch.save(partial, tmp_path / "p.tar")
        with pytest.raises(CheckpointError, match="is not a checkpoint of this toolkit"):
            ck.load_checkpoint(tmp_path / "p.tar")
    good = {"model_state": {"w": torch.ones(1)}, "model_args": {"arch": "x"}}
    torch.save(good, tmp_path / "g.tar")
    assert ck.load_checkpoint(tmp_path / "g.tar")["model_args"] == {"arch": "x"}


class Evil:
    def __reduce__(self):
        return (print, ("ran",))


def test_load_tensors_refuses_code_and_garbage(tmp_path):
    with open(tmp_path / "evil.tar", "wb") as f:
        torch.save({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match=rf"^refused to load {re.escape(str(tmp_path / 'evil.tar'))}: it holds "
                                              r"objects other than tensors and plain data, which could run code \(.+\)$"):
        ck.load_tensors(tmp_path / "evil.tar")
    torch.save({"x": torch.ones(1000)}, tmp_path / "whole.tar")
    (tmp_path / "junk.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:2000])  # truncated
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / 'junk.tar'))} is not a readable "
                                              r"checkpoint \(truncated or not a PyTorch file: .+\)$"):
        ck.load_tensors(tmp_path / "junk.tar")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        ck.load_tensors(tmp_path / "empty.tar")


def test_first_non_finite():
    big = torch.full((4,), 3e38)  # finite values whose sum overflows
    assert ck.first_non_finite({"a": big, "n": torch.arange(3)}) is None
    state = {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([float("nan")])}
    assert ck.first_non_finite(state) == "b"
    assert ck.first_non_finite({"big": big, "c": torch.tensor([float("nan")])}) == "c"
    with refused("x.tar holds non-finite weights (NaN or infinity in b): the run that wrote it diverged; use an "
                 "earlier checkpoint or retrain with a lower --lr"):
        ck.check_finite_weights(state, "x.tar")
    ck.check_finite_weights({"a": big}, "x.tar")


def test_expect():
    c = {"task": "gender", "model_args": {"arch": "levi_hassner"}, "classes": ["female", "male"]}
    ck.expect(c, "c.tar", task="gender", arch="levi_hassner", classes=("female", "male"))
    ck.expect(c, "c.tar")
    with refused("c.tar is a 'gender' checkpoint, not 'age': pass the right --checkpoint (or -a for the age task)"):
        ck.expect(c, "c.tar", task="age")
    with refused("c.tar holds architecture 'levi_hassner', not 'resnet18' as asked"):
        ck.expect(c, "c.tar", arch="resnet18")
    with refused("c.tar was trained on classes ['female', 'male'], but the data has ['f', 'm']: use a matching "
                 "checkpoint or data folder"):
        ck.expect(c, "c.tar", classes=["f", "m"])


def test_check_trainable():
    ck.check_trainable({"model_args": {"arch": "x"}}, "c.tar", "resumed")
    ck.check_trainable({"model_args": {"members": 1}}, "c.tar", "resumed")
    ck.check_trainable({"model_args": None}, "c.tar", "resumed")
    with refused("e.tar is an ensemble of 3 networks (ensemble.py): it evaluates and predicts, but cannot be "
                 "resumed; use one of its members' checkpoints"):
        ck.check_trainable({"model_args": {"members": 3}}, "e.tar", "resumed")


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.mark.parametrize("classes,head,head_copied", [(["a", "b"], "linear", True), (["a", "c"], "linear", False),
                                                      (["a", "b"], "coral", False), (["a", "b"], None, True)])
def test_transfer_weights(classes, head, head_copied):
    theirs = {k: v + 1 for k, v in net().state_dict().items()}
    theirs["extra"] = torch.ones(1)
    model_args = {"arch": "mlp"} if head is None else {"arch": "mlp", "head": head}
    ckpt = {"model_state": theirs, "model_args": model_args, "classes": ["a", "b"]}
    model = net()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    kept = ck.transfer_weights(model, ckpt, "c.tar", "mlp", classes, {"2.weight", "2.bias"})
    assert kept == ([] if head_copied else ["2.weight", "2.bias"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, theirs[k] if (head_copied or not k.startswith("2.")) else own[k])


def test_transfer_weights_keeps_tensors_of_another_shape_and_refuses_another_network():
    theirs = net().state_dict()
    theirs["0.weight"] = torch.ones(5, 3)
    del theirs["0.bias"]
    model = net()
    kept = ck.transfer_weights(model, {"model_state": theirs, "model_args": {"arch": "mlp"}, "classes": []}, "c.tar",
                               "mlp", [], set())
    assert kept == ["0.weight", "0.bias"]
    with refused("--init-from c.tar holds architecture 'mlp', not 'resnet18': start from a checkpoint of the same "
                 "network"):
        ck.transfer_weights(net(), {"model_state": theirs, "model_args": {"arch": "mlp"}}, "c.tar", "resnet18", [],
                            set())
    with pytest.raises(CheckpointError, match="cannot be a start for --init-from"):
        ck.transfer_weights(net(), {"model_state": {}, "model_args": {"arch": "mlp", "members": 2}}, "c.tar", "mlp",
                            [], set())


def test_the_umask_is_read_from_proc_without_changing_it(umask_027, monkeypatch):
    monkeypatch.setattr(ck.os, "umask", lambda mask: (_ for _ in ()).throw(AssertionError("umask changed")))
    assert ck.current_umask() == 0o027


def test_the_write_probe_is_made_in_the_folder_itself(tmp_path, monkeypatch):
    made = record_probe_folders(monkeypatch, ck)
    ck.check_writable(tmp_path / "run")
    assert made == [tmp_path / "run"]


def test_the_not_writable_message_gives_the_reason_only(tmp_path):
    (tmp_path / "file").write_text("x")
    with refused(f"checkpoint folder {tmp_path / 'file'} is not writable (File exists): choose another with "
                 f"--checkpoint-dir"):
        ck.check_writable(tmp_path / "file")


def test_checkpoints_load_where_asked(tmp_path):
    torch.save({"model_state": {"w": torch.ones(2)}, "model_args": {}}, tmp_path / "c.tar")
    assert ck.load_checkpoint(tmp_path / "c.tar", map_location="meta")["model_state"]["w"].device.type == "meta"
    assert ck.load_tensors(tmp_path / "c.tar")["model_state"]["w"].device.type == "cpu"
    assert ck.load_tensors(tmp_path / "c.tar", map_location="meta")["model_state"]["w"].device.type == "meta"


@pytest.mark.parametrize("error,shown", [
    (pickle.UnpicklingError("line one\nline two"), "refused to load c.tar: it holds objects other than tensors and "
                                                   "plain data, which could run code (line one)"),
    (pickle.UnpicklingError("  "), "refused to load c.tar: it holds objects other than tensors and plain data, which "
                                   "could run code (unsafe content)"),
    (pickle.UnpicklingError("u" * 200), "refused to load c.tar: it holds objects other than tensors and plain data, "
                                        "which could run code (" + "u" * 160 + ")"),
    (RuntimeError("bad\nworse"), "c.tar is not a readable checkpoint (truncated or not a PyTorch file: bad)"),
    (EOFError(), "c.tar is not a readable checkpoint (truncated or not a PyTorch file: EOFError)"),
    (OSError("r" * 200), "c.tar is not a readable checkpoint (truncated or not a PyTorch file: " + "r" * 160 + ")"),
])
def test_load_errors_show_their_first_line(monkeypatch, error, shown):
    def fail(*a, **k):
        raise error
    monkeypatch.setattr(torch, "load", fail)
    with refused(shown):
        ck.load_tensors(Path("c.tar"))


def test_files_without_classes_have_none():
    ck.expect({"task": "gender", "model_args": {}}, "c.tar", classes=[])
    theirs = net().state_dict()
    kept = ck.transfer_weights(net(), {"model_state": theirs, "model_args": {"arch": "mlp"}}, "c.tar", "mlp", [],
                               {"2.weight", "2.bias"})
    assert kept == []  # no classes either side: the same labels, the head is copied too
    with refused("e.tar is an ensemble of 2 networks (ensemble.py): it evaluates and predicts, but cannot be a start "
                 "for --init-from; use one of its members' checkpoints"):
        ck.transfer_weights(net(), {"model_state": {}, "model_args": {"arch": "mlp", "members": 2}}, "e.tar", "mlp",
                            [], set())
