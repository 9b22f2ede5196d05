"""The oracle: every op family's forward and backward as naive vectorised NumPy.

One module per family (activation, batchnorm, cast, conv, cross_entropy, dropout,
linear, loss, optim, pool) with the same function names, arguments and results as the
backends' modules (``gpukernels/cpu/`` for the ``numpy`` backend, ``gpukernels/triton/``
for ``cuda`` and ``interpret``). Each module's docstring gives the formulas; the code is
them, written out once, with no tuning, no threads and no layout paths, so it can be
read in one sitting and trusted: ``tests/reference/`` checks every family against
PyTorch in float64, and the tests of every backend compare against this package.

Conventions shared with the backends: results have the inputs' dtype (batch norm forms
its statistics in float64 and rounds them once, as the ``numpy`` backend does);
``needs=(dx, dw, db)`` flags return None for a gradient not asked for; state (batch
norm's running statistics, optimizer state) is updated in place. bfloat16 is only
converted (``cast``, ``add_forward``), never computed on. Functions take NumPy arrays,
and CuPy arrays where they only use the array API (``backend.get_array_module``).

Runs under no backend: nothing dispatches here. The ``numpy`` backend's modules
re-export a function of this package where it is already the fastest NumPy form.
"""
