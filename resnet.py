"""ResNet-18 and ResNet-34 (He et al. 2016), written here so that a run needs
no torchvision: importing torchvision takes about a second (its ops import
torch._dynamo), as long as importing torch itself, and predict.py's start-up
is the larger part of a run on a folder of photos.

The networks are torchvision's ``resnet18`` / ``resnet34`` (``weights=None``)
module for module: the same state-dict names and shapes (checkpoints of
either load into the other), the same forward pass, and the same random
initialisation drawn in the same order, so a seeded run starts from the same
weights (tests/test_resnet.py compares them with torchvision's).
"""
from __future__ import annotations

import torch
from torch import nn

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a strided 1x1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet-18 or -34 with an ImageNet-sized ``fc`` (1000 outputs), as torchvision builds it."""

    def __init__(self, depth: int, num_classes: int = 1000):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"unsupported ResNet depth {depth}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        blocks = LAYERS[depth]
        self.layer1 = self._layer(64, blocks[0], 1)
        self.layer2 = self._layer(128, blocks[1], 2)
        self.layer3 = self._layer(256, blocks[2], 2)
        self.layer4 = self._layer(512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:  # built before the block, as torchvision does (RNG order)
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
