"""kernelprovider: Jupyter kernels inside GPU Apptainer/Singularity images, here or via Slurm."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
