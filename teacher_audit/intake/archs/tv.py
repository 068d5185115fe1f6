"""torchvision ImageNet classifiers by name (prefix ``tv_``), always built with ``weights=None``.

Nothing is downloaded: the audit loads the user's weights into the bare torchvision graph. For
``in_channels != 3`` the stem convolution is replaced by one of the same geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

from teacher_audit.intake.archs.base import register_arch

#: name -> (torchvision constructor, dotted path of the stem conv, dotted path of the final linear)
MODELS: dict[str, tuple[Callable[..., nn.Module], str, str]] = {
    "resnet18": (tvm.resnet18, "conv1", "fc"),
    "resnet34": (tvm.resnet34, "conv1", "fc"),
    "resnet50": (tvm.resnet50, "conv1", "fc"),
    "mobilenet_v2": (tvm.mobilenet_v2, "features.0.0", "classifier.1"),
    "vgg11_bn": (tvm.vgg11_bn, "features.0", "classifier.6"),
    "vgg16_bn": (tvm.vgg16_bn, "features.0", "classifier.6"),
}


def _replace_stem(model: nn.Module, path: str, in_channels: int) -> None:
    old = model.get_submodule(path)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{path} is not a Conv2d")
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,  # type: ignore[arg-type]
                    padding=old.padding, dilation=old.dilation, groups=old.groups,  # type: ignore[arg-type]
                    bias=old.bias is not None)
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def _register(tv_name: str) -> None:
    ctor, stem, head = MODELS[tv_name]

    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = ctor(weights=None, num_classes=num_classes)
        _replace_stem(model, stem, in_channels)
        return model

    build.__doc__ = f"torchvision {tv_name} (ImageNet layout, weights=None)."
    register_arch(f"tv_{tv_name}", family="imagenet", input_size=(224, 224), stats="imagenet",
                  classifier_key=f"{head}.weight", first_conv_key=f"{stem}.weight")(build)


for _name in MODELS:
    _register(_name)
