"""fireablate: Fire-module (SqueezeNet) ablation studies, from size calculator to figures."""

__version__ = "0.1.0"
