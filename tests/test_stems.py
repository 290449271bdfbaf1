from __future__ import annotations

import pytest

from sepcli.errors import UsageError
from sepcli.inference.stems import available_stems, default_stems, plan_stems

FOUR = ["drums", "bass", "other", "vocals"]


def test_direct_sources_default_to_all():
    assert [r.name for r in plan_stems(FOUR, None)] == FOUR
    assert all(r.kind == "source" for r in plan_stems(FOUR, None))


def test_a_one_source_model_also_gives_the_rest_of_the_mix_by_default():
    assert default_stems(["vocals"]) == ["vocals", "accompaniment"]
    assert default_stems(["drums"]) == ["drums", "no_drums"]
    assert default_stems(FOUR) == FOUR and default_stems(["vocals", "other"]) == ["vocals", "other"]
    recipes = plan_stems(["vocals"], None)
    assert [(r.name, r.kind) for r in recipes] == [
        ("vocals", "source"),
        ("accompaniment", "mix_minus"),
    ]
    assert [r.name for r in plan_stems(["vocals"], ["vocals"])] == ["vocals"]  # asked: only that


def test_accompaniment_is_sum_of_others_for_four_stem_models():
    (r,) = plan_stems(FOUR, ["accompaniment"])
    assert r.kind == "sum" and r.indices == (0, 1, 2)


def test_accompaniment_of_a_six_source_model_includes_guitar_and_piano():
    six = [*FOUR, "guitar", "piano"]
    (r,) = plan_stems(six, ["accompaniment"])
    assert r.kind == "sum" and [six[i] for i in r.indices] == [s for s in six if s != "vocals"]


def test_accompaniment_is_mixture_minus_vocals_otherwise():
    (r,) = plan_stems(["vocals"], ["accompaniment"])
    assert r.kind == "mix_minus" and r.indices == (0,)


def test_no_source_stems():
    (r,) = plan_stems(FOUR, ["no_drums"])
    assert r.kind == "sum" and r.indices == (1, 2, 3)
    (r,) = plan_stems(["vocals", "drums"], ["no_drums"])
    assert r.kind == "mix_minus" and r.indices == (1,)


def test_unknown_stem_lists_available():
    with pytest.raises(UsageError, match="unknown stem 'piano'.*available: vocals, accompaniment"):
        plan_stems(["vocals"], ["piano"])
    assert available_stems(["vocals"]) == ["vocals", "accompaniment", "no_vocals"]


def test_duplicates_and_case_are_normalised():
    assert [r.name for r in plan_stems(FOUR, ["Vocals", "vocals", " bass "])] == ["vocals", "bass"]
