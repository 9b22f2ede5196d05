"""Benchmarks: every entry checks correctness first, then times ours against the best
alternative on the same machine in the same run (PyTorch CPU here; cuDNN on a GPU)."""
