"""Starting a ResNet from ImageNet weights (``--pretrained PATH|imagenet``).

``imagenet`` takes torchvision's own weights through its download and cache
(``$TORCH_HOME/hub/checkpoints``): a machine that is online fetches them once.
Offline, the error names the file to fetch and where to put it. A PATH is a
state dict of torchvision's ResNet (``resnet18-f37072fd.pth``, or one saved
with ``torch.save(model.state_dict())``), loaded with weights_only=True; its
``fc`` layer (ImageNet's 1,000 classes) is not used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gender_age.core.checkpointing import CheckpointError, check_finite_weights, load_tensors


def imagenet_weights(arch: str):
    """torchvision's ImageNet weights enum of a ResNet (IMAGENET1K_V1, whose file names are stable)."""
    from torchvision.models import ResNet18_Weights, ResNet34_Weights

    return {"resnet18": ResNet18_Weights, "resnet34": ResNet34_Weights}[arch].IMAGENET1K_V1


def fetch_imagenet(arch: str) -> dict:
    """The ImageNet state dict from torchvision's cache, downloaded when missing; a one-line
    CheckpointError naming the file when it can be neither read nor downloaded."""
    weights, target = imagenet_weights(arch), imagenet_file(arch)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"--pretrained imagenet: cannot get {weights.url} ({first}): fetch that file into "
                              f"{target}, or pass its path as --pretrained PATH") from None


def imagenet_file(arch: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of ``arch``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_weights(arch).url).name


def check_pretrained(spec: str | None, arch: str) -> None:
    """Before a run reads its data: a one-line CheckpointError when --pretrained cannot be used
    (not a ResNet, no such file, ImageNet weights neither cached nor downloadable); the ImageNet
    weights are downloaded into torchvision's cache now when they are missing."""
    if not spec:
        return
    if arch not in ("resnet18", "resnet34"):
        raise CheckpointError(f"--pretrained starts a ResNet (resnet18, resnet34), not --arch {arch}: add "
                              f"--arch resnet18")
    if spec != "imagenet":
        if not Path(spec).is_file():
            raise CheckpointError(f"--pretrained {spec}: no such file (a torchvision ResNet state dict, or imagenet)")
    elif not imagenet_file(arch).is_file():
        fetch_imagenet(arch)


def read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"--pretrained {path}: no such file (a torchvision ResNet state dict, or imagenet)")
    state = load_tensors(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training script's wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--pretrained {path}: not a state dict of tensors")
    return state


def load_pretrained(model: torch.nn.Module, spec: str, arch: str) -> str:
    """Load ImageNet (or a file's) weights into a ResNet's trunk, in place; -> what was loaded, for the log."""
    trunk = getattr(model, "trunk", None)
    if trunk is None or arch not in ("resnet18", "resnet34"):
        raise CheckpointError(f"--pretrained starts a ResNet (resnet18, resnet34), not --arch {arch}")
    state = fetch_imagenet(arch) if spec == "imagenet" else read_state_dict(Path(spec))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_finite_weights(state, spec)
    try:
        trunk.load_state_dict(state)  # strict: every trunk tensor from the file (the trunk's fc is an Identity)
    except RuntimeError as e:
        raise CheckpointError(f"--pretrained {spec}: its weights do not fit {arch} "
                              f"({str(e).strip().splitlines()[0][:160]})") from None
    return f"pretrained: the {arch} trunk starts from {spec} ({len(state)} tensors); the heads start afresh"

