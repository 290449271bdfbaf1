"""Write ``tests/data/shapes/msst_configs.json``: the published MSST YAML configs
of the families sepcli runs, as data for the shape-coverage tests (a dev script).

    python scripts/gen_shape_fixtures.py \\
        --repo TRvlvr/application_data=/path/to/clone --under mdx_model_data/mdx_c_configs \\
        --repo ZFTurbo/Music-Source-Separation-Training=/path/to/clone --under configs

Each ``--repo NAME=GITDIR --under FOLDER`` pair reads every ``*.yaml`` under
FOLDER at the clone's ``HEAD`` (``git show``; a bare clone works), parses it with
sepcli's MSST loader and keeps those whose model keys are a BS-RoFormer,
Mel-Band RoFormer or MDX23C (other architectures, by their keys or, where
those look alike, by the file name, are listed under ``other_architectures``). Only configs (data) are stored, no code; the commit of
each repository is recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "data" / "shapes" / "msst_configs.json"
#: MSST architectures whose config keys look like a RoFormer's or MDX23C's, told
#: apart by the file name (MSST has no model_type in its YAMLs).
FAMILIES = ("bs_roformer", "mel_band_roformer", "mdx23c")
OTHER_BY_NAME = ("conformer", "segm_models", "torchseg", "swin_upernet", "mamba")


def _git(gitdir: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", gitdir, *args], check=True, capture_output=True, text=True
    ).stdout


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def collect(repos: list[tuple[str, str, str]]) -> dict[str, Any]:
    from sepcli.errors import SepcliError
    from sepcli.models.importers.msst import MSSTLoader, detect_model_type

    out: dict[str, Any] = {"generated_by": "scripts/gen_shape_fixtures.py", "sources": {},
                           "configs": {}, "other_architectures": {}}  # fmt: skip
    for name, gitdir, under in repos:
        commit = _git(gitdir, "rev-parse", "HEAD").strip()
        out["sources"][name] = commit
        files = _git(gitdir, "ls-tree", "-r", "--name-only", "HEAD", under).split()
        for path in sorted(f for f in files if f.endswith(".yaml")):
            text = _git(gitdir, "show", f"HEAD:{path}")
            data = yaml.load(text, Loader=MSSTLoader)  # noqa: S506 (safe loader + tuples)
            key = f"{name}/{path}"
            if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
                out["other_architectures"][key] = "no model: section"
                continue
            other = [o for o in OTHER_BY_NAME if o in Path(path).name]
            if other:
                out["other_architectures"][key] = f"{other[0]} (by its file name)"
                continue
            try:
                model_type = detect_model_type(data, key)
            except SepcliError:
                keys = sorted(data["model"])[:6]
                out["other_architectures"][key] = f"model keys {keys}..."
                continue
            if model_type not in FAMILIES:
                out["other_architectures"][key] = f"{model_type} (another family)"
                continue
            out["configs"][key] = {"model_type": model_type, "config": _plain(data)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", required=True, help="NAME=GITDIR")
    parser.add_argument("--under", action="append", required=True, help="folder in the repo")
    args = parser.parse_args(argv)
    if len(args.repo) != len(args.under):
        parser.error("give one --under per --repo")
    repos = [(*r.split("=", 1), u) for r, u in zip(args.repo, args.under, strict=True)]
    data = collect(repos)  # type: ignore[arg-type]
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(data['configs'])} configs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
