"""Distillation: the Distiller contract, feature taps, methods and the training loop."""
