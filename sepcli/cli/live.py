"""``sepcli live`` (a file or a device input through a model to an output device)
and ``sepcli separate -`` (standard input to standard output, FIFOs or files).

The streaming core is :mod:`sepcli.inference.live` and :mod:`sepcli.audio.stream`;
this module turns options into calls and prints. Audio devices need the
optional ``sounddevice`` package (``pip install 'sepcli[live]'``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from sepcli.cli.common import err_console, handle_errors, separator_options, setup_logging
from sepcli.errors import AudioDecodeError, SepcliError, UsageError

INSTALL_LIVE = "audio devices need the 'live' extra: pip install 'sepcli[live]' (sounddevice)"


def parse_gains(text: str | None) -> dict[str, float]:
    """``"vocals=0.2,accompaniment=1"`` -> ``{"vocals": 0.2, "accompaniment": 1.0}``."""
    gains: dict[str, float] = {}
    if not text:
        return gains
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            gain = float(value) if sep else 1.0
        except ValueError:
            raise UsageError(f"--mix: {item!r} is not STEM=GAIN (e.g. vocals=0.2)") from None
        if not np.isfinite(gain):
            raise UsageError(f"--mix: {item!r}: the gain must be a number")
        gains[name.strip().lower()] = gain
    return gains


# -- latency report -------------------------------------------------------------
def _prepare(
    separator: Any,
    stems: Sequence[str],
    sample_rate: int,
    channels: int,
    block: int,
    plan: Any,
    quiet: bool,
) -> tuple[float, Any]:
    """Measure the plan's latency and the model's speed; say both. Returns
    ``(latency seconds, warm-up)``; raises :class:`TooSlowError` when it cannot keep up."""
    from sepcli.inference import live

    latency, alg, warm = live.prepare(separator, stems, sample_rate, channels, block)
    if not quiet:
        what = "the model's own chunk plan" if plan.offline else (
            f"chunks of {plan.segment_seconds:.3f} s + {plan.context_seconds:.3f} s look-ahead"
        )  # fmt: skip
        asked = plan.requested
        over = (
            f"; more than the {asked:g} s asked: this machine computes a chunk in "
            f"{warm.max_push_seconds:.2f} s now"
            if asked is not None and latency > asked
            else ""
        )
        err_console.print(
            f"latency {latency:.3f} s ({what}; {alg / sample_rate:.3f} s of audio + compute), "
            f"real-time factor {warm.rtf:.3f} (warm-up){over}",
            soft_wrap=True,
        )
    return latency, warm


def _streaming_separator(
    model: str,
    device: str,
    separator_config: Any,
    latency: float | None,
    cache_dir: str | None,
    offline: bool,
    quiet: bool,
) -> tuple[Any, Any]:
    """The model loaded for a stream (``separate -`` and ``live``): its
    :class:`~sepcli.inference.separator.Separator` on the chunk plan for ``latency``,
    and that plan. A model that needs the whole track first (MSST's
    ``inference.normalize``) is refused."""
    from sepcli.cli.bars import load_model_for_cli
    from sepcli.inference import live
    from sepcli.inference.normalize import stream_refusal
    from sepcli.inference.separator import Separator, resolve_device

    torch_device = resolve_device(device)
    archive = load_model_for_cli(model, torch_device, cache_dir, offline, quiet)
    plan = live.plan_for_latency(archive.metadata, separator_config, latency)
    separator = Separator(archive, plan.config, device=torch_device)
    if separator.needs_track_stats:
        raise stream_refusal(separator.metadata.name)
    return separator, plan


def _report_pipe(stats: Any, quiet: bool) -> None:
    if quiet or not stats.latencies:
        return
    err_console.print(
        f"measured latency: median {stats.percentile(50):.3f} s, p99 {stats.percentile(99):.3f} s; "
        f"real-time factor {stats.rtf:.3f}; {stats.frames / stats.sample_rate:.1f} s of audio",
        soft_wrap=True,
    )


# -- separate - -o - --------------------------------------------------------------
def _stdout_to_devnull() -> None:
    """After a broken pipe: no flush at exit may raise again (Python's documented fix)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def separate_stream(
    *,
    out: Path,
    stems: list[str] | None,
    model: str,
    device: str,
    separator_config: Any,
    fmt: str,
    bit_depth: str,
    channels: str,
    raw_format: str | None,
    raw_rate: int | None,
    raw_channels: int | None,
    mix: str | None,
    latency: float | None,
    cache_dir: str | None,
    offline: bool,
    quiet: bool,
) -> None:
    """``sepcli separate -``: standard input in, stems out as they are computed."""
    from sepcli.audio import stream as pipes
    from sepcli.inference import live

    if fmt not in ("wav", "raw"):
        raise UsageError("standard input writes --format wav or raw (streams)")
    if sys.stdin.isatty():
        raise UsageError(
            "'-' reads audio from standard input: pipe it in (ffmpeg -i X -f wav - | ...)"
        )
    if str(out) == "-" and sys.stdout.isatty():
        raise UsageError(
            "-o - writes audio to standard output: pipe it on (| ffplay -), not a terminal"
        )
    raw = None
    if raw_format or raw_rate or raw_channels:
        if not (raw_format and raw_rate and raw_channels):
            raise UsageError("raw PCM input needs --raw-format, --raw-rate and --raw-channels")
        raw = pipes.PcmFormat(raw_format, raw_rate, raw_channels)
    gains = parse_gains(mix)
    stem_list = list(gains) if gains else stems
    if gains and stems and set(stems) != set(gains):
        raise UsageError("--mix names the stems; leave out --stems or give the same ones")
    target = str(out)
    per_stem = "{stem}" in target
    if target != "-" and not per_stem and (out.is_dir() or target == "separated"):
        out.mkdir(exist_ok=True)  # the default folder; an existing one
        target, per_stem = str(out / "{stem}.wav"), True
    if gains and per_stem:
        raise UsageError("--mix makes one output and -o with {stem} one per stem: give one")

    separator, plan = _streaming_separator(
        model, device, separator_config, latency, cache_dir, offline, quiet
    )
    names = [r.name for r in separator.stems(stem_list)]
    if len(names) > 1 and not gains and not per_stem:
        raise UsageError(
            f"{len(names)} stems to one output: give --mix STEM=GAIN,... to mix them, "
            "or -o 'PATH/{stem}.wav' for one file or FIFO per stem"
        )
    block = int(round(live.DEFAULT_BLOCK_SECONDS * separator.sample_rate))
    rate_guess = raw.sample_rate if raw else separator.sample_rate
    ch_guess = raw.channels if raw else separator.metadata.audio_channels
    reported = None
    if latency is not None:  # measured before reading, so the source is not kept waiting
        reported, _ = _prepare(separator, names, rate_guess, ch_guess, block, plan, quiet)

    sinks: list[Any] = []
    reader = None
    try:
        reader = pipes.open_stream(sys.stdin.fileno(), raw)
        info = reader.format
        if latency is not None and (info.sample_rate, info.channels) != (rate_guess, ch_guess):
            alg = live.algorithmic_latency(separator, names, info.sample_rate, info.channels, block)
            if not quiet:
                err_console.print(
                    f"latency at the input's rate: {alg / info.sample_rate:.3f} s of audio"
                )
        oc = info.channels if channels == "auto" and info.channels <= 2 else (
            separator.metadata.audio_channels if channels == "auto" else int(channels)
        )  # fmt: skip
        bits = int(bit_depth) if bit_depth != "auto" else (
            info.bit_depth if info.bit_depth in (16, 24, 32) else 16
        )  # fmt: skip
        enc = pipes.encoding_for_bits(bits)
        out_fmt = pipes.PcmFormat(enc, info.sample_rate, oc)
        if per_stem:
            try:
                by_stem = {n: target.format(stem=n) for n in names}
            except (KeyError, IndexError, ValueError):
                raise UsageError(f"-o {target}: the only placeholder is {{stem}}") from None
            if len(set(by_stem.values())) < len(by_stem):
                raise UsageError("-o: give each stem its own path with {stem}")
            for path in by_stem.values():
                parent = Path(path).parent
                if not parent.is_dir():
                    raise UsageError(f"-o: folder {parent} does not exist")
            sinks = [pipes.StreamSink(by_stem[n], out_fmt, wav=fmt == "wav") for n in names]
        else:
            sinks = [pipes.StreamSink(target, out_fmt, wav=fmt == "wav")]
        weights = gains or {names[0]: 1.0}

        def write(piece: dict[str, np.ndarray]) -> None:
            if per_stem:
                for sink, n in zip(sinks, names, strict=True):
                    sink.write(piece[n])
            else:
                y = sum(np.float32(weights[n]) * piece[n] for n in names)
                sinks[0].write(np.asarray(y, dtype=np.float32))

        warned = [False]

        def watch(rtf: float) -> None:
            if rtf > 1.0 and not warned[0] and not quiet:
                warned[0] = True
                err_console.print(
                    "[yellow]warning:[/] "
                    + live.too_slow_message(separator.metadata.name, rtf, len(names)),
                    soft_wrap=True,
                )

        stats = live.run_pipe(
            separator,
            reader.blocks(block),
            info.sample_rate,
            info.channels,
            names,
            write,
            out_channels=oc,
            watch=watch if latency is not None else None,
        )
        for sink in sinks:
            sink.commit()
        sinks = []
        if latency is not None:
            _report_pipe(stats, quiet)
    except BrokenPipeError:
        _stdout_to_devnull()  # a closed reader ends a filter quietly
        return
    finally:
        for sink in sinks:
            sink.abort()
        if reader is not None:
            reader.close()


# -- sepcli live ------------------------------------------------------------------
def _sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError):  # OSError: the package is there, PortAudio is not
        raise UsageError(INSTALL_LIVE) from None
    return sounddevice


class _Keys:
    """Terminal keys while playing: 1-9 mute/unmute stem N (and select it),
    +/- raise/lower the selected stem by 2 dB, q quits."""

    def __init__(self, engine: Any, stems: list[str], quiet: bool) -> None:
        self.engine = engine
        self.stems = stems
        self.quiet = quiet
        self.selected = 0
        self.quit = threading.Event()
        self._old: Any = None

    def handle(self, key: str) -> None:
        e = self.engine
        if key in "123456789" and int(key) <= len(self.stems):
            self.selected = int(key) - 1
            stem = self.stems[self.selected]
            (e.muted.discard if stem in e.muted else e.muted.add)(stem)
        elif key in "+=-_":
            stem = self.stems[self.selected]
            step = 10 ** ((2.0 if key in "+=" else -2.0) / 20)
            e.gains[stem] = float(min(e.gains.get(stem, 1.0) * step, 8.0))
        elif key in "qQ":
            self.quit.set()
            return
        else:
            return
        self.status()

    def status(self) -> None:
        if self.quiet:
            return
        parts = []
        for i, s in enumerate(self.stems):
            mark = "muted" if s in self.engine.muted else f"{self.engine.gains.get(s, 1.0):.2f}"
            sel = ">" if i == self.selected else " "
            parts.append(f"{sel}{i + 1} {s} {mark}")
        err_console.print("  ".join(parts), soft_wrap=True)

    def start(self) -> None:
        if not sys.stdin.isatty():
            return
        try:
            import termios
            import tty
        except ImportError:  # pragma: no cover - Windows
            return
        fd = sys.stdin.fileno()
        self._old = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        threading.Thread(target=self._read, name="sepcli-keys", daemon=True).start()

    def _read(self) -> None:
        while not self.quit.is_set():
            ch = os.read(sys.stdin.fileno(), 1).decode(errors="ignore")
            if not ch:
                return
            self.handle(ch)

    def stop(self) -> None:
        if self._old is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._old)
            self._old = None


def _file_source(path: Path, engine: Any, block: int, rate: int, stop: threading.Event) -> None:
    """Push the file's blocks at the pace it plays, then end the input."""
    from sepcli import audio

    start = time.monotonic()
    sent = 0
    try:
        with audio.open_audio(path) as reader:
            for x in reader.blocks(block):
                if stop.is_set():
                    return
                x = audio.convert_channels(x, engine.channels)
                wait = start + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                engine.push(x)
                sent += x.shape[-1]
    finally:
        engine.close_input()


@click.command()
@click.argument("input", required=False, type=click.Path(path_type=Path))
@click.option("--list-devices", is_flag=True, help="List the audio devices and exit.")
@click.option("-m", "--model", default="default", show_default=True, help="Model name or archive.")
@click.option(
    "--stems",
    default=None,
    help="Stems to hear (keys 1-9 mute them while playing); default: every source "
    "and accompaniment.",
)
@click.option("--mix", default=None, help="Starting gains, e.g. vocals=0,accompaniment=1.")
@click.option(
    "--latency",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds from input to output: chooses chunk length and look-ahead.",
)
@click.option("--input-device", default=None, help="Audio input (name or number) when no INPUT.")
@click.option("--output-device", default=None, help="Audio output (name or number).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--device", default="cpu", show_default=True, help="Torch device for the model.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="CPU threads.")
@separator_options
@click.option("--cache-dir", default=None, help="Model cache folder.")
@click.option("--offline", is_flag=True, help="Never use the network to fetch a model.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def live_command(
    input,
    list_devices,
    model,
    stems,
    mix,
    latency,
    input_device,
    output_device,
    duration,
    device,
    threads,
    separator_config,
    cache_dir,
    offline,
    quiet,
) -> None:
    """Play a file (or an audio input) through a model to an audio output, live.

    \b
    Keys while playing: 1-9 mute/unmute stem N, + / - its gain by 2 dB, q quits.
    Examples:
      sepcli live song.mp3 --mix vocals=0        # karaoke while it plays
      sepcli live --input-device 2 --latency 0.5 --stems accompaniment
      sepcli live --list-devices
    """
    setup_logging(quiet)
    sd = _sounddevice()
    if list_devices:
        click.echo(str(sd.query_devices()))
        return
    if threads:
        torch.set_num_threads(threads)
    from sepcli import audio
    from sepcli.inference import live

    gains = parse_gains(mix)
    separator, plan = _streaming_separator(
        model, device, separator_config, latency, cache_dir, offline, quiet
    )
    if stems:
        wanted = [s.strip().lower() for s in stems.split(",") if s.strip()]
    else:
        wanted = list(separator.sources)
        if "accompaniment" not in wanted:
            with contextlib.suppress(SepcliError):
                separator.stems([*wanted, "accompaniment"])
                wanted.append("accompaniment")
    names = [r.name for r in separator.stems(wanted + [g for g in gains if g not in wanted])]
    if input is not None:
        info = audio.probe(input)
        rate, channels = info.sample_rate, min(info.channels, 2)
    else:
        rate, channels = separator.sample_rate, separator.metadata.audio_channels
    block = int(round(live.DEFAULT_BLOCK_SECONDS * rate))
    reported, _ = _prepare(separator, names, rate, channels, block, plan, quiet)
    # every stem at 1 (vocals + accompaniment = the original; key 1 mutes vocals);
    # --mix sets some (--mix vocals=0: karaoke)
    start_gains = {n: gains.get(n, 1.0) for n in names}
    engine = live.LiveEngine(
        separator, names, rate, channels, int(round(reported * rate)),
        gains=start_gains, block_frames=block,
    )  # fmt: skip
    stop = threading.Event()
    failed: list[str] = []

    def out_cb(outdata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        outdata[:] = engine.pull(frames).T

    def duplex_cb(
        indata: np.ndarray, outdata: np.ndarray, frames: int, t: Any, status: Any
    ) -> None:
        engine.push(np.ascontiguousarray(indata.T))
        outdata[:] = engine.pull(frames).T

    try:
        if input is not None:
            stream = sd.OutputStream(
                samplerate=rate, channels=channels, blocksize=block, dtype="float32",
                device=output_device, callback=out_cb,
            )  # fmt: skip
        else:
            stream = sd.Stream(
                samplerate=rate, channels=channels, blocksize=block, dtype="float32",
                device=(input_device, output_device), callback=duplex_cb,
            )  # fmt: skip
    except (sd.PortAudioError, ValueError) as e:
        raise UsageError(f"cannot open the audio device ({str(e).splitlines()[0]})") from None
    keys = _Keys(engine, names, quiet)
    warned = False
    started = time.monotonic()
    source = None
    try:
        engine.start()
        with stream:
            device_latency = stream.latency
            if not isinstance(device_latency, float):
                device_latency = max(device_latency)  # (input, output) of a duplex stream
            if not quiet:
                err_console.print(
                    f"playing {reported + device_latency:.2f} s behind the input "
                    f"(model {reported:.2f} s + device {device_latency:.3f} s); "
                    "keys: 1-9 mute, +/- gain, q quit",
                    soft_wrap=True,
                )
                keys.status()
            keys.start()
            if input is not None:
                source = threading.Thread(
                    target=_file_source, args=(input, engine, block, rate, stop), daemon=True
                )
                source.start()
            while not keys.quit.is_set():
                time.sleep(0.05)
                if duration is not None and time.monotonic() - started >= duration:
                    break
                if input is not None and engine.drained:
                    break
                if not stream.active:
                    failed.append("the audio device stopped")
                    break
                if engine._error is not None:
                    break
                st = engine.stats
                behind = st.overruns or (st.frames_in > 5 * rate and st.rtf > 1.0)
                if behind and not warned and not quiet:
                    warned = True  # continuous watching: say it once, the counts go on
                    err_console.print(
                        "[yellow]warning:[/] "
                        + live.too_slow_message(separator.metadata.name, st.rtf, len(names)),
                        soft_wrap=True,
                    )
    except sd.PortAudioError as e:
        failed.append(f"audio device error ({str(e).splitlines()[0]})")
    finally:
        keys.stop()
        stop.set()
        engine.close_input()
        if source is not None:
            source.join(2.0)
    engine.join(10.0)
    st = engine.stats
    if not quiet:
        err_console.print(
            f"{st.frames_in / rate:.1f} s separated; real-time factor {st.rtf:.3f}; "
            f"{st.underruns} underrun(s), {st.overruns} overrun(s)",
            soft_wrap=True,
        )
    if failed:
        raise AudioDecodeError(failed[0])
