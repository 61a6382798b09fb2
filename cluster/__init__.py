"""cluster: the run store, executors (local, slurm, ray), dispatch, status, collection, MLflow."""
