"""JupyterHub's side: the spawner, the options form and its validator, the batch script, hub config."""
