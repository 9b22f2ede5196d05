"""Example models built on gpukernels and the training CLI."""
