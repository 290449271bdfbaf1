"""The audio formats sepcli reads and writes, and the clip policies of its writer."""

from __future__ import annotations

__all__ = [
    "AUDIO_SUFFIXES",
    "SOUNDFILE_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "OUTPUT_FORMATS",
    "CLIP_POLICIES",
    "RESCALE_PEAK",
]

#: Suffixes decoded with soundfile (libsndfile 1.2 reads and writes MP3).
SOUNDFILE_SUFFIXES: frozenset[str] = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".w64",
     ".rf64", ".caf", ".au", ".snd"}
)  # fmt: skip
#: Suffixes decoded through ffmpeg (``.stem.mp4`` is ``.mp4``).
FFMPEG_SUFFIXES: frozenset[str] = frozenset(
    {".m4a", ".m4b", ".mp4", ".aac", ".opus", ".wma", ".webm", ".mka", ".mkv", ".mov",
     ".alac", ".ac3", ".eac3", ".dts", ".ape", ".wv", ".amr", ".3gp", ".mp2", ".mpc",
     ".tta", ".spx"}
)  # fmt: skip
#: Lower-case suffixes recognised as audio when scanning folders.
AUDIO_SUFFIXES: frozenset[str] = SOUNDFILE_SUFFIXES | FFMPEG_SUFFIXES
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg")
CLIP_POLICIES = ("rescale", "clamp", "none")
#: Peak after the ``rescale`` clip policy scaled a file down.
RESCALE_PEAK = 0.99
