"""normbench: a command-line lab bench for normalization layers."""

__version__ = "0.1.0"
