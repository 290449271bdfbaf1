"""Audio I/O: find, probe, decode, resample, convert channels, encode atomically.

Layout: a track is a float32 array ``(channel, time)``; blocks streamed by
:class:`AudioReader` and :class:`AudioWriter` have the same layout.

One module per job; every public name is re-exported here, so
``from sepcli import audio; audio.load_audio(...)`` is the way to use them:

- :mod:`~sepcli.audio.formats`: the suffixes read, the formats written, clip policies;
- :mod:`~sepcli.audio.discovery`: expand files and folders into audio inputs;
- :mod:`~sepcli.audio.ffmpeg`: find ffmpeg/ffprobe (``SEPCLI_FFMPEG``, ``SEPCLI_FFPROBE``);
- :mod:`~sepcli.audio.probe`: rate, channels, declared length (soundfile, ffprobe,
  and a RIFF/AIFF/W64 header check for truncated files);
- :mod:`~sepcli.audio.decode`: stream samples (soundfile, or an ffmpeg pipe);
- :mod:`~sepcli.audio.convert`: channel conversion and soxr resampling, whole or streamed;
- :mod:`~sepcli.audio.encode`: streaming writers that publish through :mod:`sepcli.atomic`.

Decoding uses soundfile (libsndfile) for :data:`SOUNDFILE_SUFFIXES` and an
``ffmpeg`` subprocess for :data:`FFMPEG_SUFFIXES` (mp4/m4a/stems...).

What counts as corrupt (an :class:`~sepcli.errors.AudioDecodeError`):

- a file the decoders do not recognise, or an error the decoder raises;
- ffmpeg exiting with a non-zero status;
- fewer frames than the container declares: WAV/RF64/AIFF whose data chunk
  declares more bytes than the file holds (checked before decoding; W64 too); lossless
  and Ogg files that decode short of their declared frame count; MP3 and ffmpeg
  files that decode short of their declared duration by more than
  ``max(0.1 s, 1 %)`` (lossy streams only estimate their length);
- a file that decodes to zero frames.

Writing goes to a hidden temp file beside the target (``.name.sepcli-XXXXXXXX.tmp``)
and is renamed over the target only when complete, so an existing file is
never damaged. See ``docs/audio-formats.md`` for the format and clip tables.
"""

from __future__ import annotations

from sepcli.audio.convert import StreamResampler, convert_channels, resample, resampled_length
from sepcli.audio.decode import AudioReader, load_audio, open_audio
from sepcli.audio.discovery import find_audio_files, is_audio_file
from sepcli.audio.encode import AudioWriter, output_bit_depth, output_format, write_audio
from sepcli.audio.ffmpeg import ffmpeg_available
from sepcli.audio.formats import (
    AUDIO_SUFFIXES,
    CLIP_POLICIES,
    FFMPEG_SUFFIXES,
    OUTPUT_FORMATS,
    RESCALE_PEAK,
    SOUNDFILE_SUFFIXES,
)
from sepcli.audio.probe import AudioInfo, probe

__all__ = [
    "output_bit_depth",
    "output_format",
    "AUDIO_SUFFIXES",
    "SOUNDFILE_SUFFIXES",
    "FFMPEG_SUFFIXES",
    "OUTPUT_FORMATS",
    "CLIP_POLICIES",
    "RESCALE_PEAK",
    "ffmpeg_available",
    "is_audio_file",
    "find_audio_files",
    "AudioInfo",
    "probe",
    "AudioReader",
    "open_audio",
    "load_audio",
    "convert_channels",
    "resample",
    "resampled_length",
    "StreamResampler",
    "AudioWriter",
    "write_audio",
]
