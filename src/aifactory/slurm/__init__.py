"""Slurm: the one place that runs Slurm commands (queries), the shared poller, the demo cluster."""
