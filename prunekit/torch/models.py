"""Models used by the demo, examples and benchmarks."""

import torch
from torch import nn

__all__ = ["SeedCNN", "SmallResNet", "build_model", "MODELS", "SEED_CNN_DENSE", "SMALL_RESNET_DENSE"]

#: Parameters the seed's recipe keeps dense in the seed CNN (the first conv holds few weights and
#: feeds everything; biases and batch-norm are never pruned).
SEED_CNN_DENSE = ("bias", "beta", "gamma", "conv1.")


class SeedCNN(nn.Module):
    """The seed's simple MNIST CNN: three stride-2 3x3 convs (64, 128, 256) with BN and ReLU, then a
    linear layer from 256 x 2 x 2 = 1024 features. Inputs smaller than 28 x 28 are resized to it."""

    def __init__(self, in_channels=1, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, 256, 3, stride=2)
        self.bn3 = nn.BatchNorm2d(256)
        self.linear1 = nn.Linear(1024, classes)

    def forward(self, x):
        if x.shape[-1] != 28 or x.shape[-2] != 28:
            x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.linear1(torch.flatten(x, 1))


#: Parameters the small ResNet's recipes keep dense: the stem conv (9 weights per output channel, feeds
#: everything), biases and batch-norm.
SMALL_RESNET_DENSE = ("bias", "beta", "gamma", "stem.")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; the input added back (through a strided 1x1 conv + BN when the shape changes)."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet for 28 x 28 grey images, sized to train in minutes on two CPU cores: a stride-2 3x3
    stem (32 channels, 14 x 14), three stages of ``blocks`` basic blocks (32, 64, 128 channels; strides 1,
    2, 2: 14, 7, 4 pixels), global average pooling and a linear layer. Any input size works (stride 16
    in all); ``features(x)`` returns the three stages' outputs (strides 2, 4, 8) for a detection head.
    """

    def __init__(self, in_channels=1, classes=10, widths=(32, 64, 128), blocks=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            layers = [BasicBlock(channels, width, 1 if i == 0 else 2)]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        self.num_features = channels

    def features(self, x):
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        return x1, x2, self.layer3(x2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)[2]), 1))


def _resnet18(classes):
    import torchvision
    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)  # small grey images
    model.maxpool = nn.Identity()
    return model


MODELS = {"seed-cnn": SeedCNN, "small-resnet": SmallResNet, "resnet18": _resnet18}


def build_model(name, classes=10):
    """A model by name: ``seed-cnn``, ``small-resnet`` (:class:`SmallResNet`) or ``resnet18`` (torchvision's,
    adapted to 1-channel input)."""
    if name not in MODELS:
        from prunekit.errors import ConfigError
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    if name in ("seed-cnn", "small-resnet"):
        return MODELS[name](classes=classes)
    return MODELS[name](classes)
