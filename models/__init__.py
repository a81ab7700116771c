"""Supernets: plain ``nn.Module`` s registered by name; ``models.build(name, **kwargs)``."""

from .autoencoder import ConvAutoencoder, DenseAutoencoder
from .convnet import ConvNet
from .dncnn import DnCNN
from .mlp import MLP
from .registry import available, build, check_args, register
from .resnet import BasicBlock, Bottleneck, ResNet
from .skip import SkipAutoencoder, SkipConvAutoencoder

__all__ = [
    "MLP",
    "BasicBlock",
    "Bottleneck",
    "ConvAutoencoder",
    "ConvNet",
    "DenseAutoencoder",
    "DnCNN",
    "ResNet",
    "SkipAutoencoder",
    "SkipConvAutoencoder",
    "available",
    "build",
    "check_args",
    "register",
]
