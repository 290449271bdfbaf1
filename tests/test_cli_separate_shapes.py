"""``sepcli separate`` on a real song equals the reference's chunked demix, for one
published config of each new RoFormer shape (issue 26).

Each case is a published config of :mod:`shape_cases`' catalogue at reduced
width (:func:`shape_cases.shrink`: every key kept; the mask MLPs 1 x ``dim``)
with its published chunking (``inference.dim_t`` or ``audio.chunk_size``,
``num_overlap``, stereo or mono) and seeded random weights. The archive is made
by ``sepcli models import --format msst`` from a checkpoint of the reference
module's weights and run by ``sepcli separate`` on MUSDB preview mixtures
played one after another (:func:`conftest.real_song`; a mono model gets their
mono downmix as a mono file), long enough for two or more chunks on the grid
and the one placed at the end, off the grid.

The peer: the reference module inside the chunking loop these archives carry
(recipe ``mdxc``: audio-separator 0.47.1's ``MDXCSeparator.demix``, RoFormer
branch; tests/separate_parity.py). The module is audio-separator 0.47.1's model
class where it has every part of the config (baseline heads, mono, linear
attention), else splifft 0.0.9's ``BSRoformer`` (HyperACE and axial-refiner
heads, ``rms_norm_eps``, ``skip_connection``, which audio-separator's class
ignores) on ``torch.stft`` (:class:`splifft_reference.SplifftWaveform`, which
says why not splifft's own STFT).

A chunk that is not a whole number of hops (no ``inference.dim_t``) cannot be
given to audio-separator, which reads a chunk only as ``stft_hop_length *
(dim_t - 1)`` and whose model class drops each chunk's samples after its last
whole hop; its loop is handed the chunk as one "hop" of ``chunk`` samples with
``dim_t`` 2 (the model is not built from that dict), and the module is
splifft's, which returns the whole chunk.

Figures: docs/models.md, "Every published config shape", real-song table.
"""

from __future__ import annotations

import copy
import math

import pytest
import soundfile as sf
from conftest import real_song

pytest.importorskip("splifft", reason="splifft 0.0.9 is a test-only reference")
pytest.importorskip("einops")

from audio_separator_reference import reference_model, write_msst_yaml  # noqa: E402
from separate_parity import cli_separate, import_archive, reference_separate  # noqa: E402
from shape_cases import (  # noqa: E402
    all_configs,
    shape_class,
    shrink,
    splifft_random,
)
from snr import snr_db  # noqa: E402
from splifft_reference import SplifftWaveform  # noqa: E402

from sepcli.models.importers.msst import config_from_msst, read_msst_yaml  # noqa: E402

SPLIFFT = "splifft/data/config/"
TRVLVR = "TRvlvr/application_data/mdx_model_data/mdx_c_configs/"

#: (case, shape class, published config): one config per new shape class, and the
#: other new shapes (two outputs, a published stem name with spaces, a chunk that
#: is not a whole number of hops) on a baseline class.
CASES = [
    ("hyperace_v1", "bs+hyperace_residual_v1", SPLIFFT + "bs_roformer-unwa-hyperace_v1_instrum.json"),
    ("rms_norm_eps", "bs+eps", SPLIFFT + "bs_roformer-fruit-sw.json"),
    ("mono", "bs+mono", SPLIFFT + "bs_roformer-anvuew-dereverb_room_mono.json"),
    ("skip_connection", "mel+skip", TRVLVR + "config_mel_band_roformer_similarity.yaml"),
    ("two_outputs", "mel", TRVLVR + "config_melbandroformer_instvoc_duality.yaml"),
    ("stem_name_with_spaces", "bs", TRVLVR + "model_bs_roformer_ep_937_sdr_10.5309.yaml"),
    ("chunk_not_whole_hops", "bs", SPLIFFT + "bs_roformer-gilliaaan-phantom_center_wide_v1.json"),
]  # fmt: skip
#: Shape classes whose every published config has 21.8-s chunks (960000 samples)
#: and a head whose width no key sets (HyperACE's CNN: 256-768 channels; the axial
#: refiner: 8 heads of 64): 2-3 minutes each on 2 idle CPUs.
HEAVY = [
    ("hyperace_v2", "bs+hyperace_residual_v2", SPLIFFT + "bs_roformer-unwa-hyperace_v2_vocals.json"),
    ("axial_refiner", "bs+axial_refiner_large_v2", SPLIFFT + "mel_roformer-unwa-large_inst_v2.json"),
]  # fmt: skip


def _audio_separator_has(cls: str) -> bool:
    """Whether audio-separator 0.47.1's model classes have every part of a shape class."""
    return set(cls.split("+")[1:]) <= {"mono", "linear"}


def _reference(model_type: str, data: dict, cfg, chunk: int):
    """(reference model ``(1, C, chunk) -> stems``, its state dict as a checkpoint)."""
    if _audio_separator_has(shape_class(model_type, cfg)) and not cfg.chunk_size:
        ref = reference_model(model_type, data, seed=1)
        return ref, ref.state_dict()
    ref = splifft_random(cfg, chunk // cfg.stft_hop_length + 1)
    return SplifftWaveform(ref, cfg, chunk).eval(), ref.state_dict()


def _loop_config(data: dict, cfg) -> dict:
    """The dict audio-separator's loop reads: ``inference.dim_t`` as sepcli reads it
    (module docstring for a chunk that is not whole hops)."""
    data = copy.deepcopy(data)
    data["inference"]["dim_t"] = cfg.dim_t
    if cfg.chunk_size:
        data["model"]["stft_hop_length"] = cfg.chunk_size
        data["inference"]["dim_t"] = 2
    return data


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("case", "cls", "name"),
    [pytest.param(*c, id=c[0]) for c in CASES + HEAVY],
)
def test_separate_equals_reference_demix_on_real_music(tmp_path, shared_data, case, cls, name):
    model_type, published = all_configs()[name]
    # inference.normalize (fruit-sw) is dropped on both sides: audio-separator's loop
    # ignores it (its parity with MSST's arithmetic: tests/test_normalize.py, SCNet)
    published = copy.deepcopy(published)
    published.get("inference", {}).pop("normalize", None)
    assert shape_class(model_type, config_from_msst(published, model_type)) == cls
    # through a YAML file, as audio-separator reads it (tuples tagged)
    small = shrink(model_type, published, frames=None)
    small["model"]["mlp_expansion_factor"] = 1  # the mask MLPs dominate the time at 32 wide
    # through a YAML file, as audio-separator reads it (tuples tagged)
    data = read_msst_yaml(write_msst_yaml(tmp_path / "small.yaml", small))
    cfg = config_from_msst(data, model_type)
    chunk, step = cfg.chunk_samples, cfg.chunk_samples // cfg.num_overlap
    # two or more chunks on the grid, then the one placed at the end, off the grid
    seconds = math.ceil((chunk + 1.5 * step) / 44100)
    mix = real_song(shared_data, seconds)
    if cfg.audio_channels == 1:
        mix = mix.mean(axis=0, keepdims=True)
    length = mix.shape[-1]
    assert (length - chunk) % step and (length - chunk) // step >= 1
    song = tmp_path / "song.wav"
    sf.write(song, mix.T, 44100, subtype="FLOAT")

    model, state = _reference(model_type, data, cfg, chunk)
    archive = import_archive(tmp_path, case, data, state)
    got = cli_separate(tmp_path, archive, song, ",".join(cfg.sources))
    expected = reference_separate(model, _loop_config(data, cfg), mix)
    scores = {}
    for stem in cfg.sources:
        assert got[stem].shape == expected[stem].shape == mix.shape
        scores[stem] = round(snr_db(expected[stem], got[stem], stem), 1)
    print(f"{case} ({cls}, {name.rsplit('/', 1)[-1]}): chunk {chunk}, num_overlap "
          f"{cfg.num_overlap}, {seconds} s x {cfg.audio_channels} ch, dB {scores}")  # fmt: skip
    assert all(db >= 60 for db in scores.values()), scores
