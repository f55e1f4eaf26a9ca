"""Bulk runs: manifests, jobs, the runner, distributors, workers, ledger, checkpoints."""
