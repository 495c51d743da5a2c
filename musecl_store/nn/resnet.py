"""ResNet-18 image encoder in plain torch.

The backbone uses the state-dict key names of the common ResNet-18 checkpoints
(``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer4.1.downsample.1``), so a local ImageNet
checkpoint loads with :func:`load_backbone`. Its 1000-class ``fc`` is not used: a projection
head maps the 512 pooled features to the embedding size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from musecl_store.errors import MuseclError

# Per-channel mean and std of ImageNet, the usual input normalisation for ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(MuseclError, ValueError):
    """A pretrained checkpoint does not fit the ResNet-18 backbone."""


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


STEMS = ("imagenet", "small")


class ResNet18(nn.Module):
    """The ResNet-18 trunk up to global average pooling: images -> 512 features.

    ``stem="imagenet"`` is the usual 7x7 stride-2 convolution and 3x3 max-pool (a 64 px tile
    is 16 px when the first block sees it); ``"small"`` keeps the 7x7 stride-2 convolution
    (same weights, so ImageNet checkpoints still load) but drops the max-pool, so 1-5 px
    details (shop signs, litter) reach the blocks at twice the resolution, at 4x the compute.
    """

    features = 512

    def __init__(self, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, not {stem!r}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class ImageEncoder(nn.Module):
    """ResNet-18 + a linear projection: a batch of RGB images -> ``dim``-d embeddings.

    Input: float tensor (B, 3, H, W) with values in [0, 1]; it is normalised here.
    """

    def __init__(self, dim: int = 128, stem: str = "imagenet"):
        super().__init__()
        self.backbone = ResNet18(stem)
        self.proj = nn.Linear(ResNet18.features, dim)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.backbone((x - self.mean) / self.std))


def load_backbone(encoder: ImageEncoder, path: str | Path) -> list[str]:
    """Load ResNet-18 weights from a local checkpoint into ``encoder.backbone``.

    Accepts a plain state dict or one under ``"state_dict"``/``"model"``, with or without a
    ``module.``/``backbone.`` prefix; the classifier (``fc.*``) is ignored. Loaded with
    ``weights_only=True``: a checkpoint is untrusted input.

    Returns:
        the keys that were loaded.

    Raises:
        PretrainedWeightsError: unreadable file, missing keys or wrong shapes (named).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path} holds no state dict")
    clean: dict[str, Tensor] = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if not k.startswith("fc."):
            clean[k] = v
    own = encoder.backbone.state_dict()
    missing = [k for k in own if k not in clean]
    if missing:
        raise PretrainedWeightsError(
            f"{path} is not a ResNet-18 checkpoint: {len(missing)} backbone keys are missing, "
            f"e.g. {', '.join(missing[:3])}"
        )
    wrong = [
        f"{k} {tuple(clean[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if tuple(clean[k].shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise PretrainedWeightsError(
            f"{path} has weights of the wrong shape for ResNet-18: {'; '.join(wrong[:3])}"
        )
    encoder.backbone.load_state_dict({k: clean[k] for k in own})
    return list(own)
