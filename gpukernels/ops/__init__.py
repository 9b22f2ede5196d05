"""One file per op family: its autograd Function(s), argument checks and public
function (re-exported by ``gk.functional``). The kernels they call are chosen in
``gpukernels.kernels``; the autograd core is ``gpukernels.autograd``."""
