"""Checkpoints and result files: atomic writes and safe, checked loading.

Every file this toolkit writes goes through ``atomic_write``: the bytes go to a
temporary file in the same folder, are flushed and fsync'ed, and only then
renamed over the target. A crash (or kill -9) at any moment leaves either the
old file or the new one, never half of one.

Checkpoints are loaded with ``torch.load(..., weights_only=True)``: a pickle
that would run code is refused, never executed.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

# torch is imported by the functions that need it: prediction with ONNX models uses this
# module's errors and atomic writes without loading torch

CHECKPOINT_FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message names the problem."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows
    (Linux's /proc/self/status); elsewhere set and restored under a lock."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    mkstemp creates the file readable by its owner only (0600); it gets the
    permissions any new file would have (0666 less the umask) before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj, *paths: str | os.PathLike) -> None:
    """Serialise once to memory (a failing torch.save leaves no partial file),
    then write each path atomically."""
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    for path in paths:
        with atomic_write(path) as f:
            f.write(buf.getbuffer())


def check_writable(folder: str | os.PathLike, need_bytes: int = 0) -> None:
    """Fail before training, not after an hour, when results cannot be saved."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(f"checkpoint folder {folder} is not writable ({e.strerror or e}): "
                              f"choose another with --checkpoint-dir") from None
    if need_bytes:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < need_bytes:
            raise CheckpointError(f"checkpoint folder {folder} has {free / 2**20:.0f} MiB free, "
                                  f"need at least {need_bytes / 2**20:.0f} MiB: free space or use --checkpoint-dir")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint safely and check its structure, or raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: train one first "
                              f"(python gender_age_classifier.py) or pass --checkpoint PATH")
    ckpt = load_tensors(path, map_location)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this toolkit (no model_state/model_args): "
                              f"weights-only files cannot be used, retrain or re-save it")
    return ckpt


def load_tensors(path: Path, map_location="cpu"):
    """torch.load with weights_only=True: tensors and plain data only, or a one-line CheckpointError."""
    try:
        import torch
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except __import__("pickle").UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"refused to load {path}: it holds objects other than tensors and plain "
                              f"data, which could run code ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file: "
                              f"{msg[:160]})") from None
    return ckpt


def first_non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor of a state dict holding NaN
    or infinity, or None when every value is finite. (A finite sum means every value is finite, and
    summing is several times faster than building the mask; only a non-finite sum, which huge
    finite values can also give, is checked value by value.)"""
    import torch
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and \
                not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
            return name
    return None


def check_finite_weights(model_state: dict, path) -> None:
    """Raise CheckpointError when a checkpoint's weights hold NaN or infinity
    (a run that diverged): such a model predicts nothing useful."""
    name = first_non_finite(model_state)
    if name is not None:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or infinity in {name}): the run that "
                              f"wrote it diverged; use an earlier checkpoint or retrain with a lower --lr")


def expect(ckpt: dict, path, task: str | None = None, arch: str | None = None,
           classes: list | None = None) -> None:
    """Raise CheckpointError when a checkpoint is not for what was asked."""
    if task is not None and ckpt.get("task") != task:
        raise CheckpointError(f"{path} is a '{ckpt.get('task')}' checkpoint, not '{task}': "
                              f"pass the right --checkpoint (or -a for the age task)")
    if arch is not None and ckpt["model_args"].get("arch") != arch:
        raise CheckpointError(f"{path} holds architecture '{ckpt['model_args'].get('arch')}', "
                              f"not '{arch}' as asked")
    if classes is not None and list(ckpt.get("classes", [])) != list(classes):
        raise CheckpointError(f"{path} was trained on classes {ckpt.get('classes')}, but the data has "
                              f"{list(classes)}: use a matching checkpoint or data folder")


def check_trainable(ckpt: dict, path, what: str) -> None:
    """Raise CheckpointError for an ensemble (ensemble.py): it evaluates and predicts, but holds no
    one network that a run could continue (``what``: "resumed") or start from."""
    model_args = ckpt.get("model_args")
    members = model_args.get("members", 1) if isinstance(model_args, dict) else 1
    if members != 1:
        raise CheckpointError(f"{path} is an ensemble of {members} networks (ensemble.py): it evaluates and "
                              f"predicts, but cannot be {what}; use one of its members' checkpoints")


def transfer_weights(model: torch.nn.Module, ckpt: dict, path, arch: str, classes: list,
                     head_names: set[str]) -> list[str]:
    """Start ``model`` from another run's weights (fine-tuning), in place.

    Copies every tensor of ``ckpt["model_state"]`` whose name and shape match,
    except the output layer (``head_names``: the state-dict names of the last
    layer) unless the checkpoint was trained on the same ``classes`` with a
    plain linear head: a head trained for other labels is no better a start
    than a fresh one. Raises CheckpointError for another architecture.
    Returns the names that keep the model's own initialisation.
    """
    check_trainable(ckpt, path, "a start for --init-from")
    if ckpt["model_args"].get("arch") != arch:
        raise CheckpointError(f"--init-from {path} holds architecture '{ckpt['model_args'].get('arch')}', "
                              f"not '{arch}': start from a checkpoint of the same network")
    same_labels = (list(ckpt.get("classes", [])) == list(classes)
                   and ckpt["model_args"].get("head", "linear") == "linear")
    own = model.state_dict()
    source = ckpt["model_state"]
    copied, kept = {}, []
    for name, tensor in own.items():
        theirs = source.get(name)
        if theirs is None or theirs.shape != tensor.shape or (name in head_names and not same_labels):
            kept.append(name)
        else:
            copied[name] = theirs
    model.load_state_dict({**own, **copied})
    return kept
