"""Pure signal-processing functions over tensors: no I/O, no globals, no device guessing."""
