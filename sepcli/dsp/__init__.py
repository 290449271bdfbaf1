"""Pure signal-processing functions over tensors: no I/O, no globals, no device guessing."""

#: Phase methods for magnitude models (see :mod:`sepcli.dsp.phase`); defined here,
#: free of torch, so that the CLI can list them without importing torch.
PHASE_METHODS = ("mixture", "wiener", "griffin-lim", "misi")

#: Chunking recipes (see :mod:`sepcli.inference.recipes`): how a track is cut into
#: the chunks a model sees and blended back. ``overlap-add`` is sepcli's own
#: (real context on both sides, trapezoid crossfade); ``demucs`` and ``mdxc``
#: reproduce the chunking the published Demucs and MDX-C/RoFormer models use,
#: ``msst`` Music-Source-Separation-Training's generic demix (SCNet).
CHUNKING_RECIPES = ("overlap-add", "demucs", "mdxc", "msst")

#: Input normalisations around a model (see :mod:`sepcli.inference.normalize`):
#: ``track`` is MSST's ``inference.normalize`` (the whole track's mean and standard
#: deviation, applied before the chunks and undone on every stem after).
INPUT_NORMALIZATIONS = ("track",)

#: Ensemble algorithms (see :mod:`sepcli.dsp.ensemble`): audio-separator's / UVR's
#: names, accepted wherever a blend mode is. Waveform ones first, then spectral.
ENSEMBLE_ALGORITHMS = (
    "avg_wave",
    "median_wave",
    "min_wave",
    "max_wave",
    "avg_fft",
    "median_fft",
    "min_fft",
    "max_fft",
    "uvr_max_spec",
    "uvr_min_spec",
)
