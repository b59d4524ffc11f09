"""Models used by the demo, examples and benchmarks."""

import torch
from torch import nn

__all__ = ["SeedCNN", "build_model", "MODELS", "SEED_CNN_DENSE"]

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


def _resnet18(classes):
    import torchvision
    model = torchvision.models.resnet18(num_classes=classes)
    model.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)  # small grey images
    model.maxpool = nn.Identity()
    return model


MODELS = {"seed-cnn": SeedCNN, "resnet18": _resnet18}


def build_model(name, classes=10):
    """A model by name: ``seed-cnn`` or ``resnet18`` (torchvision's, adapted to 1-channel input)."""
    if name not in MODELS:
        from prunekit.errors import ConfigError
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}")
    return SeedCNN(classes=classes) if name == "seed-cnn" else MODELS[name](classes)
