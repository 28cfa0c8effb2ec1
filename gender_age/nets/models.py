"""Networks only: no I/O, no argparse.

Every network is built from a plain dict, ``model_args``, that checkpoints store
verbatim, so ``predict.py`` (or anyone) can rebuild the exact network with
``build_model(**model_args)`` and no guessing.
"""
from __future__ import annotations

import torch
from torch import nn

# Input geometry of the Levi-Hassner network: images are resized so the
# shorter side is 256, then a 227x227 crop is taken (random for training,
# central for evaluation). The fully connected layer fixes 227 exactly.
LEVI_HASSNER_INPUT = 227
LEVI_HASSNER_RESIZE = 256


class LeviHassnerNet(nn.Module):
    """Levi & Hassner (CVPR 2015 workshop) CNN with one extra FC layer.

    Shapes for a (N, 3, 227, 227) input:
      conv1 96@7x7/4   -> (N, 96, 56, 56), max-pool 3/2 -> (N, 96, 27, 27)
      conv2 256@5x5 p2 -> (N, 256, 27, 27), max-pool 3/2 -> (N, 256, 13, 13)
      conv3 384@3x3 p1 -> (N, 384, 13, 13), max-pool 3/2 -> (N, 384, 6, 6)
      fc 384*6*6 -> 512 -> 512 -> num_outputs (logits, no softmax)
    BatchNorm replaces the paper's local response normalisation, as in the
    original port. Dropout lives in nn.Dropout modules (not F.dropout), so
    ``model.eval()`` really switches it off.
    """

    def __init__(self, num_outputs: int, dropout: float = 0.5):
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")

        def block(cin: int, cout: int, k: int, stride: int, pad: int) -> nn.Sequential:
            return nn.Sequential(
                # bias is redundant before BatchNorm, which has its own shift
                nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )

        self.features = nn.Sequential(
            block(3, 96, 7, 4, 0),
            block(96, 256, 5, 1, 2),
            block(256, 384, 3, 1, 1),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(384 * 6 * 6, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_outputs),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                # small Gaussian weights as in the Levi-Hassner paper (std 0.01 / 0.005
                # there); large fan-in kaiming weights make the first logits explode
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 227, 227) normalised float -> (N, num_outputs) logits
        return self.classifier(self.features(x))


class ResNetRegressor(nn.Module):
    """A torchvision ResNet trunk with a task head in place of ``fc`` (torchvision is imported
    only when a ResNet is built: its import costs about a second that Levi-Hassner runs skip).

    ``head`` maps the pooled (N, 512) features to the outputs; for ordinal
    losses it is one of the heads in ``nets/heads.py`` (CORAL's shared weight and
    K-1 biases, Niu et al.'s K-1 independent units, CORN's K-1 units).
    """

    def __init__(self, depth: int, head: nn.Module):
        super().__init__()
        from torchvision.models import resnet18, resnet34

        factories = {18: resnet18, 34: resnet34}
        if depth not in factories:
            raise ValueError(f"unsupported ResNet depth {depth}")
        trunk = factories[depth](weights=None)  # never downloads anything
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, H, W) -> features (N, 512) -> head outputs
        return self.head(self.trunk(x))


class GenderAgeHead(nn.Module):
    """Two heads on one feature vector: gender logits and an ordinal age head.

    (N, F) features -> (N, genders + age outputs): the first ``genders`` columns
    are the gender logits (a 2-way softmax), the rest the age head's outputs
    (its loss's K-1 or K values). One concatenated tensor keeps every consumer
    (evaluation, test-time augmentation, ONNX export) a single-output network.
    """

    def __init__(self, in_features: int, genders: int, age_head: nn.Module):
        super().__init__()
        self.gender = nn.Linear(in_features, genders)
        self.age = age_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gender(x), self.age(x)], dim=1)


class Ensemble(nn.Module):
    """Networks of one design trained apart (``ensemble.py``), answering as one: the mean of their outputs.

    (N, 3, H, W) -> each member (N, outputs) -> stacked (M, N, outputs) -> mean (N, outputs).
    The logits are averaged (for a softmax or an ordinal head's sigmoids, the geometric-mean
    ensemble), so the ensemble keeps one output tensor of the members' layout and evaluation,
    test-time augmentation, export and predict.py treat it as one network.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


ARCHITECTURES = ("levi_hassner", "resnet18", "resnet34")


def output_layer(model: nn.Module) -> nn.Module:
    """The last layer: the linear classifier or the ordinal head."""
    return model.classifier[-1] if isinstance(model, LeviHassnerNet) else model.head


def output_layer_names(model: nn.Module) -> set[str]:
    """The state-dict names of the last layer's tensors (what fine-tuning on
    other labels re-initialises)."""
    head = output_layer(model)
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {f"{prefix}.{key}" for key in head.state_dict()}


def output_bias(model: nn.Module) -> nn.Parameter:
    """The bias of a network's last layer (CORAL: its K-1 rank biases), (outputs,); of a
    gender-and-age network, the bias of its age head."""
    head = output_layer(model)
    head = getattr(head, "age", head)  # a dual head: its age part
    return head.coral_bias if hasattr(head, "coral_bias") else head.bias


def default_input_geometry(arch: str) -> tuple[int, int]:
    """(resize, crop) that an architecture is trained with by default."""
    if arch == "levi_hassner":
        return LEVI_HASSNER_RESIZE, LEVI_HASSNER_INPUT
    return 256, 224


def build_model(arch: str, num_outputs: int, dropout: float = 0.5,
                head: str = "linear", num_ranks: int | None = None, genders: int = 0,
                members: int = 1) -> nn.Module:
    """Rebuild a network from the ``model_args`` a checkpoint stores.

    arch: one of ARCHITECTURES.
    num_outputs: number of classes (for head="linear").
    head: "linear" (plain logits) or an ordinal loss name from ordinal.LOSSES,
      in which case ``num_ranks`` (K) sets the head's size.
    genders: with an ordinal head, also a gender head of this many logits
      (``GenderAgeHead``; num_outputs = genders + the age head's size).
    members: 2 or more: an ``Ensemble`` of that many such networks (``ensemble.py``).
    """
    if members < 1:
        raise ValueError(f"members must be 1 or more, got {members}")
    if members > 1:
        return Ensemble([build_model(arch, num_outputs, dropout, head, num_ranks, genders) for _ in range(members)])
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if head != "linear":
        from gender_age.nets.heads import make_head
        from gender_age.nets.ordinal import head_output_size
        if num_ranks is None:
            raise ValueError("an ordinal head needs num_ranks")
        num_outputs = genders + head_output_size(head, num_ranks)
    elif genders:
        raise ValueError("a gender head comes with an ordinal age head (head, num_ranks)")

    def last_layer() -> nn.Module:  # on the 512 features of either trunk
        if head == "linear":
            return nn.Linear(512, num_outputs)
        age = make_head(head, 512, num_ranks)
        return GenderAgeHead(512, genders, age) if genders else age

    if arch == "levi_hassner":
        model = LeviHassnerNet(num_outputs, dropout=dropout)
        if head != "linear":
            model.classifier[-1] = last_layer()  # the ordinal head instead, same 512 inputs
        return model
    return ResNetRegressor(int(arch.removeprefix("resnet")), last_layer())
