"""Diffusion Studio's technique code: plain Python, torch and diffusers, no UI imports, nothing runs at import but
the check that this Python is new enough for the libraries below."""

import sys

__version__ = "0.1.0"
PYTHON = (3, 11)  # diffusers 0.42 and transformers 5 require it

if sys.version_info < PYTHON:
    raise ImportError(f"Diffusion Studio needs Python {'.'.join(map(str, PYTHON))} or newer (its diffusers and "
                      f"transformers releases require it); this is Python {sys.version.split()[0]}. Install a newer "
                      "Python, then run `pip install -r requirements.txt` with it.")
