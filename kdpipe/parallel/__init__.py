"""Processes: torch.distributed helpers, the `--nproc` launcher, the run lock and stopping
on a signal. Above `core` only."""
