"""Decode speed: clips/s for 8 uniformly sampled frames from 10-second H.264 clips.

Compares `data_modules.video.read_video` with a full-decode baseline (PyAV decodes every frame, the 8 picked ones
are converted to RGB), the same baseline that also converts every frame (what a naive reader does), decord and
torchcodec. Clips are generated once with `write_video` into a cache folder (30 fps, a keyframe every 2 s, moving
textured content). Methods take turns clip by clip, for several rounds, in one process; the ratios come from this
one run. CPU ms per clip (all threads) is printed too: on a busy machine it is steadier than wall-clock time, but it
hides what threading gains. Frames of every method are checked against the baseline before timing.

    python benchmarks/bench_decode.py [--clips 4] [--rounds 3] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from data_modules.video import read_video, write_video

NUM_FRAMES = 8
SECONDS, FPS, GOP = 10, 30, 60
SIZES = [(320, 240), (640, 360)]


def make_clip(path: Path, width: int, height: int, seed: int) -> None:
    """A textured background panning under moving blocks, with a little sensor noise: realistic work for x264."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(tile, np.ones((8, 8, 1), dtype=np.uint8))  # (H', W', 3) blocky texture
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((SECONDS * FPS, height, width, 3), np.uint8)
    for i in range(len(frames)):
        dx, dy = (i * 2) % 8, (i // 3) % 8
        frame = texture[dy : dy + height, dx : dx + width].copy()
        for k in range(4):
            cx = int((0.5 + 0.4 * np.sin(0.05 * i + k)) * width)
            cy = int((0.5 + 0.4 * np.cos(0.07 * i + 2 * k)) * height)
            frame[(abs(xx - cx) < width // 12) & (abs(yy - cy) < height // 12)] = (60 * k, 255 - 50 * k, 128)
        noise = rng.integers(-4, 5, frame.shape, dtype=np.int16)
        frames[i] = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    write_video(path, frames, FPS, crf=23, keyframe_interval=GOP)


def uniform_indices(n: int) -> list[int]:
    return [int((i + 0.5) * n / NUM_FRAMES) for i in range(NUM_FRAMES)]


def full_decode(path: Path, convert_all: bool = False) -> torch.Tensor:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        if convert_all:
            arrays = [f.to_ndarray(format="rgb24") for f in frames]
            picked = [arrays[i] for i in uniform_indices(len(frames))]
        else:
            picked = [frames[i].to_ndarray(format="rgb24") for i in uniform_indices(len(frames))]
    return torch.from_numpy(np.stack(picked)).permute(0, 3, 1, 2)


def vrp_reader(path: Path) -> torch.Tensor:
    return read_video(path, NUM_FRAMES).frames


def peers() -> tuple[dict, list[str]]:
    methods, skipped = {}, []
    try:
        import decord

        def decord_reader(path: Path) -> torch.Tensor:
            reader = decord.VideoReader(str(path), num_threads=0)
            return torch.from_numpy(reader.get_batch(uniform_indices(len(reader))).asnumpy()).permute(0, 3, 1, 2)

        methods["decord"] = decord_reader
    except Exception as e:  # noqa: BLE001 — any import failure means the peer is unavailable
        skipped.append(f"decord: {type(e).__name__}: {e}")
    try:
        from torchcodec.decoders import VideoDecoder

        def torchcodec_reader(path: Path, threads: int, mode: str) -> torch.Tensor:
            decoder = VideoDecoder(str(path), num_ffmpeg_threads=threads, seek_mode=mode)
            return decoder.get_frames_at(uniform_indices(decoder.metadata.num_frames)).data

        torchcodec_reader(CLIPS[0], 1, "exact")  # loading its FFmpeg libraries happens on first use
        methods["torchcodec (1 thread, exact)"] = lambda p: torchcodec_reader(p, 1, "exact")
        methods["torchcodec (auto threads, approx)"] = lambda p: torchcodec_reader(p, 0, "approximate")
    except Exception as e:  # noqa: BLE001
        skipped.append(
            f"torchcodec: {type(e).__name__}: {str(e).splitlines()[0]} (it needs FFmpeg 4-9 shared "
            "libraries; Debian 12: apt-get install libavutil57 libavcodec59 libavformat59 libavdevice59 "
            "libavfilter8 libswscale6 libswresample4)"
        )
    return methods, skipped


def measure(methods: dict, clips: list[Path], rounds: int) -> dict[str, tuple[float, float]]:
    """Per method: (clips per wall-clock second, CPU ms per clip summed over all threads).

    Methods take turns clip by clip (in a rotating order), so a busy machine slows all of them alike.
    """
    names = list(methods)
    wall, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for name in names:
        methods[name](clips[0])  # warm-up
    for r in range(rounds):
        for k, clip in enumerate(clips):
            shift = (r * len(clips) + k) % len(names)
            for name in names[shift:] + names[:shift]:
                w, c = time.perf_counter(), time.process_time()
                methods[name](clip)
                wall[name] += time.perf_counter() - w
                cpu[name] += time.process_time() - c
    n = rounds * len(clips)
    return {name: (n / wall[name], 1000 * cpu[name] / n) for name in names}


CLIPS: list[Path] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="distinct clips per resolution")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the clips per method")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "vrp-bench-decode")
    args = parser.parse_args()
    torch.set_num_threads(1)  # decoding threads belong to FFmpeg; torch only stacks tensors here

    clips_by_size = {}
    for width, height in SIZES:
        clips = []
        for k in range(args.clips):
            path = args.cache_dir / f"clip_{width}x{height}_gop{GOP}_{k}.mp4"
            if not path.exists():
                make_clip(path, width, height, seed=k)
            clips.append(path)
        clips_by_size[(width, height)] = clips
    CLIPS.extend(clips_by_size[SIZES[0]])

    methods = {
        "full decode (PyAV, convert 8)": full_decode,
        "full decode (PyAV, convert all)": lambda p: full_decode(p, convert_all=True),
        "vrp read_video": vrp_reader,
    }
    peer_methods, skipped = peers()
    methods |= peer_methods
    for line in skipped:
        print(f"skipped {line}")

    print(
        f"{os.cpu_count()} CPU cores; PyAV {av.__version__}; {NUM_FRAMES} uniform frames of {SECONDS}s {FPS} fps "
        f"H.264 clips, keyframe every {GOP / FPS:.0f}s; {args.clips} clips x {args.rounds} rounds"
    )
    for size, clips in clips_by_size.items():
        reference = full_decode(clips[0])
        for name, fn in methods.items():
            diff = (fn(clips[0]).int() - reference.int()).abs().max().item()
            if diff > 3:  # decoders may convert YUV to RGB with different rounding, never different frames
                raise SystemExit(f"{name} returned different frames from the baseline on {clips[0]} (max diff {diff})")
        results = measure(methods, clips, args.rounds)
        base = results["full decode (PyAV, convert 8)"][0]
        best_peer = max((r for n, (r, _) in results.items() if n in peer_methods), default=float("nan"))
        print(f"\n{size[0]}x{size[1]}")
        print(f"{'method':<36} {'clips/s':>8} {'vs full decode':>15} {'vs best peer':>13} {'CPU ms/clip':>12}")
        for name, (rate, cpu_ms) in results.items():
            print(f"{name:<36} {rate:8.1f} {rate / base:14.2f}x {rate / best_peer:12.2f}x {cpu_ms:12.0f}")


if __name__ == "__main__":
    main()
