"""The networks, under the original project's module name (a clone's public entry point).

* ``LeviHassnerNet``: the Levi & Hassner (2015) CNN of the original, plus one fc 384x6x6 -> 512;
* ``ResNetRegressor``: a torchvision ResNet-18/34 with one output layer or an ordinal head;
* ``GenderAgeHead``: one network's gender logits and exact-age head;
* ``Ensemble``: several networks of one design, their logits averaged;
* ``build_model(arch, num_outputs, ...)``: any of them by name (``ARCHITECTURES``).

They live in ``gender_age.nets.models``; the ordinal heads in ``gender_age.nets.heads``.
"""
from gender_age.nets.heads import CEHead, CoralLayer, CornHead, OrdinalHead, make_head
from gender_age.nets.models import (ARCHITECTURES, Ensemble, GenderAgeHead, LeviHassnerNet, ResNetRegressor,
                                    build_model, default_input_geometry)

__all__ = ["ARCHITECTURES", "CEHead", "CoralLayer", "CornHead", "Ensemble", "GenderAgeHead", "LeviHassnerNet",
           "OrdinalHead", "ResNetRegressor", "build_model", "default_input_geometry", "make_head"]
