"""Hub-authenticated pages run as JupyterHub services (the course catalogue)."""
