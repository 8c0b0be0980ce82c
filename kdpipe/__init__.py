"""kdpipe: distill a teacher into a small student, export it, profile both, report and gate."""

__version__ = "0.4.0"
