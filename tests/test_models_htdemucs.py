"""HT-Demucs port and Demucs checkpoint import, checked against the real ``demucs`` package.

The reference is test-only. Install it as (demucs 4.1.0 imports no torchaudio,
so no stand-in is needed; ``dora-search`` and ``diffq`` are not imported by the
modules used here)::

    pip install --no-deps demucs==4.1.0
    pip install --no-deps einops julius

Random weights: a reference ``demucs.htdemucs.HTDemucs`` is built with the given
kwargs, its ``state_dict`` loaded into ours with ``strict=True``, and outputs are
compared as an SNR (reference power over difference power).
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from snr import snr_db

from sepcli.errors import ArchiveError, ConfigError, UsageError
from sepcli.models.archive import load_archive
from sepcli.models.importers.demucs import (
    config_from_kwargs,
    import_demucs,
    import_demucs_archive,
    load_bag,
    load_htdemucs,
    read_bag,
    read_checkpoint,
)
from sepcli.models.nets.htdemucs import HTDemucs, HTDemucsConfig

htdemucs_ref = pytest.importorskip("demucs.htdemucs", reason="demucs is not installed")
demucs_states = pytest.importorskip("demucs.states", reason="demucs is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FOUR = ["drums", "bass", "other", "vocals"]
SIX = ["drums", "bass", "other", "vocals", "guitar", "piano"]

#: The constructor kwargs stored in the published checkpoints (htdemucs, the
#: htdemucs_ft members; htdemucs_6s with six sources).
PUBLISHED_KWARGS = dict(
    audio_channels=2, samplerate=44100, segment=Fraction(39, 5), channels=48,
    channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0,
    wiener_residual=False, cac=True, depth=4, rewrite=True, multi_freqs=[],
    multi_freqs_depth=3, freq_emb=0.2, emb_scale=10, emb_smooth=True, kernel_size=8,
    stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4, norm_groups=4,
    dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=0.001, bottom_channels=512,
    t_layers=5, t_hidden_scale=4.0, t_heads=8, t_dropout=0.02, t_layer_scale=True,
    t_gelu=True, t_emb="sin", t_max_positions=10000, t_max_period=10000.0,
    t_weight_pos_embed=1.0, t_sparse_self_attn=False, t_sparse_cross_attn=False,
    t_cross_first=False, rescale=0.1,
)  # fmt: skip

#: Tiny configurations (8 kHz, 0.5-s segments) covering the supported options.
TINY = {
    "plain": dict(channels=8, dconv_comp=4, depth=2, nfft=256, t_layers=2, t_heads=2),
    "normed-bottom": dict(
        channels=8, dconv_comp=4, depth=3, nfft=512, t_layers=3, t_heads=4, norm_starts=1,
        norm_groups=2, bottom_channels=16, dconv_mode=3, context_enc=1,
    ),
    "variants": dict(
        channels=8, dconv_comp=2, depth=2, nfft=256, t_layers=3, t_heads=2, dconv_mode=2,
        rewrite=False, freq_emb=0.0, t_norm_first=False, t_cross_first=True,
        t_layer_scale=False, t_gelu=False, t_group_norm=True, t_norm_in=False,
        t_norm_in_group=True, growth=3, channels_time=8,
    ),
}  # fmt: skip


def reference_model(sources, seed: int = 0, audio_channels: int = 2, **kwargs):
    """A ``demucs.htdemucs.HTDemucs`` in eval mode with random weights."""
    torch.manual_seed(seed)
    kw = {"samplerate": 8000, "segment": Fraction(1, 2), **kwargs}
    return htdemucs_ref.HTDemucs(list(sources), audio_channels=audio_channels, **kw).eval()


def ours_from(reference) -> HTDemucs:
    args, kwargs = reference._init_args_kwargs
    model = HTDemucs(config_from_kwargs({"sources": args[0], **kwargs}))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.eval()


def save_package(reference, path: Path, half: bool = True, **overrides) -> Path:
    """Write ``reference`` as Demucs does (``serialize_model`` minus OmegaConf)."""
    args, kwargs = reference._init_args_kwargs
    package = {
        "klass": type(reference),
        "args": args,
        "kwargs": kwargs,
        "state": demucs_states.get_state(reference, None, half=half),
        "training_args": {"dset": {"segment": 8.8}, "seed": 42},
        **overrides,
    }
    torch.save(package, path)
    return path


# -- model parity ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_configs_match_reference(name: str) -> None:
    mono = name == "variants"
    sources = ["a", "b", "c"]
    ref = reference_model(sources, audio_channels=1 if mono else 2, **TINY[name])
    ours = ours_from(ref)
    assert set(ours.state_dict()) == set(ref.state_dict())
    for length in (4000, 3999, 1500, 37):
        mix = torch.randn(2, 1 if mono else 2, length)
        with torch.no_grad():
            expected, got = ref(mix), ours(mix)
        assert got.shape == (2, 3, 1 if mono else 2, length)
        assert snr_db(expected, got, f"{name} {length}") >= 60, (name, length)


def test_scripted_archive_matches_eager(tmp_path: Path) -> None:
    ref = reference_model(["a", "b"], **TINY["normed-bottom"])
    ours = ours_from(ref)
    scripted = torch.jit.script(ours)
    path = tmp_path / "m.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    for length in (4000, 1234):
        mix = torch.randn(1, 2, length)
        with torch.no_grad():
            eager, script, reloaded = ours(mix), scripted(mix), loaded(mix)
        assert snr_db(eager, script, "scripted") >= 60
        assert snr_db(eager, reloaded, "reloaded") >= 60


def test_input_longer_than_segment_is_refused() -> None:
    ours = ours_from(reference_model(["a", "b"], **TINY["plain"]))
    with pytest.raises(ValueError, match="at most 4000 samples"):
        ours(torch.zeros(1, 2, 4001))


def test_config_round_trip_and_validation() -> None:
    cfg = HTDemucsConfig.reference()
    assert HTDemucsConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.segment_samples == 343980 and cfg.transformer_channels == 512
    six = HTDemucsConfig.published("htdemucs_6s")
    assert six.sources == tuple(SIX) and six.transformer_channels == 384
    for bad, match in (
        ({"n_fft": 256, "depth": 4}, "collapses"),
        ({"t_heads": 7}, "divisible"),
        ({"channels_time": 32}, "channels_time"),
        ({"sources": ("a", "a")}, "unique"),
    ):
        with pytest.raises(ConfigError, match=match):
            dataclasses.replace(cfg, **bad)


@pytest.mark.slow
@pytest.mark.parametrize("sources", [FOUR, SIX], ids=["htdemucs", "htdemucs_6s"])
def test_published_sizes_match_reference(sources) -> None:
    torch.manual_seed(0)
    kwargs = dict(PUBLISHED_KWARGS)
    if len(sources) == 6:  # htdemucs_6s: no bottom projection (see HTDemucsConfig.published)
        kwargs["bottom_channels"] = 0
    ref = htdemucs_ref.HTDemucs(list(sources), **kwargs).eval()
    ours = ours_from(ref)
    name = "htdemucs" if len(sources) == 4 else "htdemucs_6s"
    assert ours.config == HTDemucsConfig.published(name)
    expected_params = {4: 41_984_456, 6: 27_414_996}[len(sources)]
    assert sum(p.numel() for p in ours.parameters()) == expected_params
    torch.set_num_threads(2)
    for length in (343980, 100_003):
        mix = torch.randn(1, 2, length) * 0.3
        with torch.no_grad():
            expected, got = ref(mix), ours(mix)
        assert snr_db(expected, got, str(length)) >= 60, length


# -- checkpoint import -----------------------------------------------------------


def test_import_reads_the_demucs_file_format(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["normed-bottom"])
    path = save_package(ref, tmp_path / "abcd1234.th")
    model, ckpt = load_htdemucs(path)
    assert ckpt.klass == "demucs.htdemucs.HTDemucs"
    assert ckpt.kwargs["segment"] == Fraction(1, 2)
    assert model.config.segment_samples == 4000
    # The reference loads the same file its own way (weights_only=False).
    theirs = demucs_states.load_model(str(path)).eval()
    mix = torch.randn(1, 2, 3000)
    with torch.no_grad():
        assert snr_db(theirs(mix), model(mix)) >= 60


def test_import_writes_a_loadable_archive(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["plain"])
    path = save_package(ref, tmp_path / "abcd1234.th")
    out = import_demucs_archive(path, tmp_path / "x.sepcli", name="tiny")
    archive = load_archive(out)
    meta = archive.metadata
    assert meta.family == "htdemucs" and meta.output == "waveform"
    assert meta.sources == tuple(FOUR) and meta.segment_seconds == 0.5
    assert meta.extra["files"]["abcd1234.th"]["sha256"]
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        assert snr_db(ref(mix), archive.module(mix)) >= 60


class _RunsCode:
    """Pickles as a call of ``builtins.open(marker, "w")``: a file appears if it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", ["open", "system"])
def test_a_file_that_runs_code_is_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "ran"
    evil = _RunsCode(marker) if payload == "open" else _RunsShell()
    ref = reference_model(FOUR, **TINY["plain"])
    path = save_package(ref, tmp_path / "evil.th", training_args={"x": evil})
    with pytest.raises(ArchiveError, match="refused") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_stand_ins_cannot_be_instantiated(tmp_path: Path) -> None:
    class Fake:  # pickles as a REDUCE of the HTDemucs class reference
        def __reduce__(self):
            return (htdemucs_ref.HTDemucs, (["a"],))

    path = tmp_path / "inst.th"
    torch.save({"klass": Fake(), "state": {}}, path)
    with pytest.raises(ArchiveError, match="refused"):
        read_checkpoint(path)


def test_other_demucs_classes_are_refused(tmp_path: Path) -> None:
    hdemucs = pytest.importorskip("demucs.hdemucs")
    demucs_v2 = pytest.importorskip("demucs.demucs")
    for klass, label in ((hdemucs.HDemucs, "Demucs v3"), (demucs_v2.Demucs, "Demucs \\(v2\\)")):
        model = klass(["a", "b"], channels=4)
        path = tmp_path / f"{klass.__name__}.th"
        save_package(model, path)
        with pytest.raises(ArchiveError, match=f"{label}.*only HT-Demucs"):
            read_checkpoint(path)


def test_truncated_and_non_checkpoint_files(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["plain"])
    path = save_package(ref, tmp_path / "good.th")
    cut = tmp_path / "cut.th"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        read_checkpoint(cut)
    text = tmp_path / "text.th"
    text.write_text("not a checkpoint")
    with pytest.raises(ArchiveError):
        read_checkpoint(text)
    bare = tmp_path / "bare.th"
    torch.save(ref.state_dict(), bare)
    with pytest.raises(ArchiveError, match="not a Demucs model package"):
        read_checkpoint(bare)
    with pytest.raises(UsageError, match="no such"):
        read_checkpoint(tmp_path / "missing.th")


def test_sizes_that_disagree_with_kwargs_name_file_and_key(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["plain"])
    args, kwargs = ref._init_args_kwargs
    path = save_package(ref, tmp_path / "odd.th", kwargs={**kwargs, "channels": 16})
    with pytest.raises(ArchiveError, match=r"odd\.th: .*encoder\.0\.conv\.weight has shape"):
        load_htdemucs(path)
    state = demucs_states.get_state(ref, None, half=True)
    del state["tencoder.0.conv.bias"]
    path = save_package(ref, tmp_path / "missing.th", state=state)
    with pytest.raises(ArchiveError, match=r"missing \['tencoder\.0\.conv\.bias'\]"):
        load_htdemucs(path)


def test_unsupported_options_are_named(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["plain"])
    for key, value in (("cac", False), ("t_emb", "cape"), ("multi_freqs", [0.5])):
        args, kwargs = ref._init_args_kwargs
        path = save_package(ref, tmp_path / f"{key}.th", kwargs={**kwargs, key: value})
        with pytest.raises(ArchiveError, match=f"{key}=.* is not supported"):
            load_htdemucs(path)


def test_quantized_state_is_refused(tmp_path: Path) -> None:
    ref = reference_model(FOUR, **TINY["plain"])
    path = save_package(ref, tmp_path / "q.th", state={"__quantized": True, "quantized": []})
    with pytest.raises(ArchiveError, match="diffq-quantized"):
        read_checkpoint(path)


# -- bags ------------------------------------------------------------------------


def _write_bag(tmp_path: Path, text: str, members: dict[str, int]) -> Path:
    import hashlib

    for sig, seed in members.items():
        ref = reference_model(FOUR, seed=seed, **TINY["plain"])
        save_package(ref, tmp_path / "tmp.th")
        data = (tmp_path / "tmp.th").read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:8]
        (tmp_path / f"{sig}-{digest}.th").write_bytes(data)
        (tmp_path / "tmp.th").unlink()
    bag = tmp_path / "bag.yaml"
    bag.write_text(text)
    return bag


def test_bag_yaml_gives_members_and_weights(tmp_path: Path) -> None:
    bag_path = _write_bag(
        tmp_path,
        "models: ['f7e0c4bc', 'd12395a8']\n"
        "weights: [[1., 0., 0., 1.], [0., 1., 1., 0.]]\nsegment: 0.25\n",
        {"f7e0c4bc": 1, "d12395a8": 2},
    )
    bag = read_bag(bag_path)
    assert bag.signatures == ("f7e0c4bc", "d12395a8") and bag.segment == 0.25
    models, weights, _, ckpts = load_bag(bag_path)
    assert weights.tolist() == [[1, 0, 0, 1], [0, 1, 1, 0]]
    assert [m.config.segment_samples for m in models] == [2000, 2000]  # the bag's segment
    assert [c.path.name.split("-")[0] for c in ckpts] == ["f7e0c4bc", "d12395a8"]


def test_bag_errors(tmp_path: Path) -> None:
    bag_path = _write_bag(tmp_path, "models: ['f7e0c4bc', 'deadbeef']\n", {"f7e0c4bc": 1})
    with pytest.raises(UsageError, match="member 'deadbeef' not found"):
        read_bag(bag_path)
    bag_path.write_text("models: ['f7e0c4bc']\nweights: [[1, 1]]\n")
    with pytest.raises(ArchiveError, match="weight rows have 2 values"):
        load_bag(bag_path)
    bag_path.write_text("models: ['f7e0c4bc']\nweights: [[1, 1], [1, 1]]\n")
    with pytest.raises(ArchiveError, match="one row per model"):
        read_bag(bag_path)
    bag_path.write_text("models: [12345678]\n")
    with pytest.raises(ArchiveError, match="quoted signature"):
        read_bag(bag_path)
    bag_path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ArchiveError, match="unreadable YAML"):
        read_bag(bag_path)
    member = next(tmp_path.glob("f7e0c4bc-*.th"))
    member.rename(tmp_path / "f7e0c4bc-00000000.th")
    bag_path.write_text("models: ['f7e0c4bc']\n")
    with pytest.raises(ArchiveError, match="does not start with 00000000"):
        read_bag(bag_path)


def test_bags_import_as_one_model_or_an_ensemble(tmp_path: Path) -> None:
    bag_path = _write_bag(tmp_path, "models: ['955717e8']\n", {"955717e8": 3})
    model, meta = import_demucs(bag_path)
    assert meta.name == "bag" and isinstance(model, HTDemucs) and meta.recipe == "demucs"
    two = _write_bag(
        tmp_path, "models: ['955717e8', 'aaaa1111']\nweights: [[1, 1, 0, 2], [1, 0, 1, 2]]\n",
        {"aaaa1111": 4},
    )  # fmt: skip
    ensemble, meta = import_demucs(two)
    assert meta.family == "ensemble" and len(ensemble.members) == 2
    assert [m.recipe for m in ensemble.members] == ["demucs", "demucs"]
    # blend = w[m, s] / sum_m w[m, s], as BagOfModels divides by the totals
    assert ensemble.members[0].blend.diagonal().tolist() == [0.5, 1.0, 0.0, 0.5]
