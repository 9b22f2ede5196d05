"""The ``numpy`` backend's kernels: fast NumPy (threads, memory layouts, BLAS GEMMs).

One module per op family with the same function names, arguments and results as the
oracle ``gpukernels.reference`` (whose docstrings give the formulas) and the Triton
backend. Where the reference is already the fastest NumPy form, the module here
re-exports its function instead of keeping a copy. ``_parallel`` holds the thread pool
conv, batch norm and ReLU share; ``conv``'s layout paths are its private modules
(``_conv_*.py``). ``tests/cpu/`` checks every family against the reference.
"""
