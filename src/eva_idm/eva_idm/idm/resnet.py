"""ResNet-18/34/50 feature extractors in plain torch, named like torchvision's.

torchvision cannot be installed beside this project's torch, yet the released IDM weights (and any
ImageNet weights a GPU server has on disk) are torchvision state dicts. The modules here therefore
use torchvision's attribute names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample.0/.1``)
so those weights load by name. The classifier (``avgpool``/``fc``) is left out: the IDM reads the
last feature map.

``output_stride=16`` (or 8) replaces the stride of the last stage(s) with dilation. The parameters
are unchanged, but the feature map keeps twice (four times) the resolution, so that a small CPU input
such as 96x128 still gives the spatial soft-argmax a usable map.
"""

from __future__ import annotations

from torch import Tensor, nn

STAGE_WIDTHS = (64, 128, 256, 512)
SUPPORTED_OUTPUT_STRIDES = (8, 16, 32)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution whose padding keeps the size (up to the stride) at any dilation."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, used for channel changes and the shortcut projection."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum of the two convolutions and the (projected) input."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand with a residual connection (ResNet-50).

    The stride sits on the 3x3 convolution ("ResNet v1.5"), as in torchvision, whose weights these are.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum of the three convolutions and the (projected) input."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """The convolutional trunk of a ResNet: stem, max-pool and four stages, no pooling or classifier.

    ``forward`` maps ``(B, 3, H, W)`` to ``(B, out_channels, H / s, W / s)`` for the output stride ``s``
    (rounded up). Multi-frame models widen ``conv1`` afterwards (see ``eva_idm.idm.model``).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, int, int, int],
        output_stride: int = 32,
    ):
        super().__init__()
        if output_stride not in SUPPORTED_OUTPUT_STRIDES:
            raise ValueError(f"output_stride: must be one of {SUPPORTED_OUTPUT_STRIDES}, got {output_stride!r}")
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # Stages that trade their stride for dilation: none at 32, layer4 at 16, layer3 and layer4 at 8.
        first_dilated_stage = {32: 5, 16: 4, 8: 3}[output_stride]
        self._channels = STAGE_WIDTHS[0]
        self._dilation = 1
        for stage, (width, num_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True), start=1):
            stride = 1 if stage == 1 else 2
            layer = self._make_stage(block, width, num_blocks, stride, dilate=stage >= first_dilated_stage)
            self.add_module(f"layer{stage}", layer)
        self.out_channels = self._channels
        self.output_stride = output_stride
        self._init_weights()

    def _make_stage(
        self, block: type[BasicBlock] | type[Bottleneck], width: int, num_blocks: int, stride: int, dilate: bool
    ) -> nn.Sequential:
        """One stage; a dilated stage keeps the resolution and widens later blocks' receptive field instead."""
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or self._channels != out_channels:
            downsample = nn.Sequential(conv1x1(self._channels, out_channels, stride), nn.BatchNorm2d(out_channels))
        blocks = [block(self._channels, width, stride, first_dilation, downsample)]
        blocks += [block(out_channels, width, dilation=self._dilation) for _ in range(num_blocks - 1)]
        self._channels = out_channels
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        """He initialisation for convolutions, identity BatchNorm: the usual from-scratch start."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Feature map of the last stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_resnet(depth: int, output_stride: int = 32) -> ResNet:
    """ResNet-``depth`` trunk (18, 34 or 50) with torchvision parameter names, randomly initialised."""
    if depth not in ARCHITECTURES:
        raise ValueError(f"backbone_depth: must be one of {sorted(ARCHITECTURES)}, got {depth!r}")
    block, blocks_per_stage = ARCHITECTURES[depth]
    return ResNet(block, blocks_per_stage, output_stride=output_stride)
