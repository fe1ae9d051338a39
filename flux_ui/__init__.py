"""FLUX UI: a web UI for the FLUX.1 image models, on diffusers."""

__version__ = "0.1.0"
