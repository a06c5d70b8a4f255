"""Diffusion Studio's technique code: plain Python, torch and diffusers, no UI imports, nothing runs at import."""

__version__ = "0.1.0"
