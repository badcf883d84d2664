"""The AI-factory hub: JupyterHub sessions as Slurm jobs on GPU nodes."""

__version__ = "0.1.0"
