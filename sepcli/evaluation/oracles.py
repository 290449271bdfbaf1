"""Oracle separations: upper and lower bounds computed from the true sources.

Pure functions on the :mod:`sepcli.dsp.stft` grid (``n_fft=4096``,
``hop_length=1024`` by default), after the sigsep oracle baselines
(``sigsep-mus-oracle``): masks built from the true sources' magnitudes are
applied to the mixture's STFT and inverted.

* ``irm1``: ratio mask ``|S_j| / sum_k |S_k|`` (magnitude ratio);
* ``irm2``: ratio mask ``|S_j|^2 / sum_k |S_k|^2`` (power ratio, "Wiener-like");
* ``ibm``: binary mask, 1 where ``|S_j| / sum_k |S_k| >= 0.5``;
* ``mix``: the mixture itself as every estimate (the lower bound).

Reference: Stöter, Liutkus, Ito, "The 2018 Signal Separation Evaluation
Campaign", LVA/ICA 2018 (oracle baselines).
"""

from __future__ import annotations

from torch import Tensor

from sepcli.dsp.stft import istft, stft

__all__ = ["ORACLES", "oracle_separate"]

ORACLES = ("irm1", "irm2", "ibm", "mix")


def oracle_separate(
    method: str,
    sources: Tensor,
    mixture: Tensor | None = None,
    n_fft: int = 4096,
    hop_length: int = 1024,
    eps: float = 1e-10,
) -> Tensor:
    """Estimate every source with an oracle.

    Args:
        method: one of :data:`ORACLES`.
        sources: true sources ``(source, channel, time)``.
        mixture: ``(channel, time)``; default the sum of ``sources``.
        n_fft, hop_length: STFT grid of the masks.
        eps: added to the mask denominator (silent bins give a zero mask).

    Returns:
        estimates ``(source, channel, time)``, same dtype and device as ``sources``.

    Raises:
        ValueError: an unknown ``method`` or mismatched shapes.
    """
    if method not in ORACLES:
        raise ValueError(f"unknown oracle {method!r}; choose from {', '.join(ORACLES)}")
    if sources.dim() != 3:
        raise ValueError(f"sources must be (source, channel, time), got {tuple(sources.shape)}")
    mix = sources.sum(0) if mixture is None else mixture
    if mix.shape != sources.shape[1:]:
        raise ValueError(
            f"mixture shape {tuple(mix.shape)} does not match sources {tuple(sources.shape)}"
        )
    if method == "mix":
        return mix.unsqueeze(0).expand_as(sources).clone()
    length = sources.shape[-1]
    power = 2.0 if method == "irm2" else 1.0
    model = stft(sources, n_fft, hop_length).abs().pow(power)  # (source, channel, freq, frame)
    mask = model / (model.sum(0, keepdim=True) + eps)
    if method == "ibm":
        mask = (mask >= 0.5).to(mask.dtype)
    mix_spec = stft(mix, n_fft, hop_length)
    return istft(mask * mix_spec.unsqueeze(0), n_fft, hop_length, length)
