"""Pure signal-processing functions over tensors: no I/O, no globals, no device guessing."""

#: Phase methods for magnitude models (see :mod:`sepcli.dsp.phase`); defined here,
#: free of torch, so that the CLI can list them without importing torch.
PHASE_METHODS = ("mixture", "wiener", "griffin-lim", "misi")
