"""Video I/O: round trips, every sampling strategy, containers/codecs, awkward streams and every bad-input case.

Fixtures are written with PyAV into a tmp dir. Most clips are "coded": frame i is a flat colour (plus a fixed faint
texture) whose red/green levels spell i, so a test can tell which frame came back despite codec loss.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data_modules.video import DecodedClip, VideoReadError, read_video, write_video

pytestmark = pytest.mark.timeout(60)  # a hang is a failure


def coded_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(n, H, W, 3) uint8 frames whose mean red/green levels encode the frame index (up to 256 frames)."""
    texture = np.random.default_rng(0).integers(-6, 7, (height, width, 1))
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        level = np.array([(i % 16) * 16 + 8, (i // 16) * 16 + 8, 128])
        frames[i] = np.clip(level + texture, 0, 255)
    return frames


def frame_index(frames: torch.Tensor) -> list[int]:
    """Inverse of coded_frames for (T, C, H, W) uint8 frames."""
    mean = frames.double().mean(dim=(2, 3))
    red, green = ((mean[:, 0] - 8) / 16).round(), ((mean[:, 1] - 8) / 16).round()
    return (red + 16 * green).long().tolist()


def encode(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fmt: str | None = None,
    fps: int = 25,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    options: dict | None = None,
) -> Path:
    """Write (T, H, W, 3) RGB frames with any codec/container PyAV has; ``pts`` in ``time_base`` units for VFR."""
    if not codec_available(codec):
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if time_base is None:  # give every frame its time explicitly: some encoders guess wrong without it
            time_base, pts = Fraction(1, fps), pts or list(range(len(frames)))
        stream.time_base = stream.codec_context.time_base = time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts[i], time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def codec_available(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:  # noqa: BLE001 — PyAV raises different types for unknown codecs across versions
        print(f"skipping: encoder {codec} is missing from this PyAV wheel")
        return False


def full_decode(path: Path) -> tuple[list[float], np.ndarray]:
    """Every frame (timestamps in seconds, (N, C, H, W) RGB) the plain way, as the reference."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        times = [float(f.pts * f.time_base) for f in frames]
        return times, np.stack([f.to_ndarray(format="rgb24").transpose(2, 0, 1) for f in frames])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """100 coded frames, 25 fps, a keyframe every 10 frames, B-frames: 4 s of H.264."""
    path = tmp_path_factory.mktemp("video") / "coded.mp4"
    write_video(path, coded_frames(100), fps=25, keyframe_interval=10)
    return path


# ----------------------------------------------------------------------------------------------------- round trip


def test_round_trip_within_codec_tolerance(tmp_path):
    t, y, x = np.meshgrid(np.arange(12), np.arange(48), np.arange(64), indexing="ij")
    frames = np.stack([(x * 4 + t * 3) % 256, (y * 5) % 256, (x + y + t * 7) % 256], -1).astype(np.uint8)
    write_video(tmp_path / "rt.mp4", torch.from_numpy(frames), fps=12, crf=10)
    clip = read_video(tmp_path / "rt.mp4", num_frames=12)
    assert isinstance(clip, DecodedClip)
    assert clip.frames.dtype == torch.uint8 and clip.frames.shape == (12, 3, 48, 64)
    assert clip.frame_mask.all()
    assert clip.timestamps.tolist() == pytest.approx([i / 12 for i in range(12)], abs=1e-3)
    assert clip.fps == pytest.approx(12) and clip.duration == pytest.approx(1.0)
    error = (clip.frames.permute(0, 2, 3, 1).float() - torch.from_numpy(frames).float()).abs().mean()
    assert error < 4.0, f"mean abs error {error} after an H.264 round trip at crf 10"


_WRITE_SCRIPT = """
import sys, numpy as np
from data_modules.video import write_video
frames = np.random.default_rng(0).integers(0, 256, (24, 96, 96, 3), dtype=np.uint8)
write_video(sys.argv[1], frames, fps=8)
"""


def test_write_video_bytes_do_not_depend_on_the_cores(tmp_path):
    """libx264's automatic thread count follows the CPU affinity and changes the bitstream: pin it."""
    import os
    import subprocess
    import sys

    cores = sorted(os.sched_getaffinity(0))
    outputs = []
    for allowed in ({cores[0]}, set(cores)):
        out = tmp_path / f"{len(allowed)}.mp4"
        subprocess.run(
            [sys.executable, "-c", _WRITE_SCRIPT, str(out)],
            check=True,
            preexec_fn=lambda allowed=allowed: os.sched_setaffinity(0, allowed),
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    if len(cores) > 1:  # more threads than the default must still work
        write_video(tmp_path / "t.mp4", coded_frames(8), fps=8, threads=2)
        assert read_video(tmp_path / "t.mp4", num_frames=8).frames.shape[0] == 8


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.float32), fps=10)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "b.mp4", np.zeros((2, 15, 16, 3), np.uint8), fps=10)


# -------------------------------------------------------------------------------------------------------- sampling


def test_uniform_takes_segment_centres(clip):
    out = read_video(clip, num_frames=8)
    # centre of segment i of 4 s is (i + 0.5) * 0.5 s -> frame (i + 0.5) * 12.5, the one on screen at that time
    assert frame_index(out.frames) == [6, 18, 31, 43, 56, 68, 81, 93]
    assert out.timestamps.tolist() == pytest.approx([i / 25 for i in frame_index(out.frames)], abs=1e-4)
    assert out.frame_mask.all() and out.duration == pytest.approx(4.0)


def test_frames_equal_a_full_decode(clip):
    """Seeks and dropped non-reference frames must not change any returned pixel."""
    times, reference = full_decode(clip)
    for seed in range(3):
        out = read_video(clip, num_frames=8, sampling="segment", generator=torch.Generator().manual_seed(seed))
        idx = [times.index(pytest.approx(t, abs=1e-4)) for t in out.timestamps.tolist()]
        assert frame_index(out.frames) == idx
        assert np.abs(out.frames.numpy().astype(int) - reference[idx].astype(int)).max() <= 1


_THREADS_SCRIPT = """
import sys, torch
from data_modules.video import read_video
for seed in range(3):
    pick = dict(num_frames=8, sampling="segment")
    one = read_video(sys.argv[1], **pick, generator=torch.Generator().manual_seed(seed))
    many = read_video(sys.argv[1], **pick, generator=torch.Generator().manual_seed(seed), threads=int(sys.argv[2]))
    assert torch.equal(one.timestamps, many.timestamps) and torch.equal(one.frames, many.frames), seed
"""


@pytest.mark.parametrize("threads", [0, 2])
def test_decoding_threads_return_the_same_frames(clip, threads):
    """The default decodes on the calling thread; FFmpeg's frame + slice threads (threads != 1), seeking and stopping
    before the end as sampled decoding does, must return the same frames. In a child process, so that this test
    process, which later tests fork DataLoader workers from, never holds FFmpeg threads."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(clip), str(threads)], check=True)


_FORK_SCRIPT = """
import multiprocessing as mp, sys
from data_modules.video import read_video

def child(path):
    read_video(path, 8, short_side=32)

if __name__ == "__main__":
    read_video(sys.argv[1], 8, short_side=32)  # the parent converts frames first, as a num_workers=0 loop does
    worker = mp.get_context("fork").Process(target=child, args=(sys.argv[1],))
    worker.start()
    worker.join(60)
    if worker.is_alive():
        worker.kill()
        sys.exit("the forked reader hung")
    sys.exit(worker.exitcode)
"""


def test_a_reader_forked_after_the_parent_read_does_not_hang(clip, tmp_path):
    """DataLoader workers are forked from a process that may have decoded already (a num_workers=0 pass, a sanity
    check). With PyAV's default swscale threads the forked child waited forever on a slice-thread pool it does not
    have (PyAV 18.1.1 / FFmpeg 8.1.3); every conversion runs on the calling thread instead."""
    import subprocess
    import sys

    script = tmp_path / "fork_read.py"  # a file, not -c: the forked child needs an importable __main__
    script.write_text(_FORK_SCRIPT)
    subprocess.run([sys.executable, str(script), str(clip)], check=True, timeout=120)


def test_segment_is_random_within_segments_and_seeded(clip):
    picks = [
        frame_index(read_video(clip, 4, sampling="segment", generator=torch.Generator().manual_seed(s)).frames)
        for s in range(6)
    ]
    for pick in picks:
        assert [p // 25 for p in pick] == [0, 1, 2, 3]  # one frame in each 1 s segment
    assert len({tuple(p) for p in picks}) > 1
    again = read_video(clip, 4, sampling="segment", generator=torch.Generator().manual_seed(0))
    assert frame_index(again.frames) == picks[0]


def test_segment_on_a_short_clip_never_fails(tmp_path):
    """30 frames for 8 segments: two random times can land on one frame, which once made the reader give up."""
    path = tmp_path / "short.mp4"
    write_video(path, coded_frames(30), fps=8)
    for seed in range(40):
        clip = read_video(path, 8, sampling="segment", generator=torch.Generator().manual_seed(seed))
        picked = frame_index(clip.frames)
        assert clip.frame_mask.all()
        assert picked == sorted(picked) and len(set(picked)) == 8, (seed, picked)


def test_fixed_fps_from_a_start_time(clip):
    out = read_video(clip, num_frames=6, sampling="fps", fps=5.0, start_sec=1.0)
    assert frame_index(out.frames) == [25, 30, 35, 40, 45, 50]
    assert out.timestamps.tolist() == pytest.approx([1.0, 1.2, 1.4, 1.6, 1.8, 2.0], abs=1e-4)


def test_fixed_fps_past_the_end_pads(clip):
    out = read_video(clip, num_frames=8, sampling="fps", fps=2.0, start_sec=2.5)
    assert frame_index(out.frames)[:3] == [62, 75, 87]
    assert out.frame_mask.tolist() == [True] * 3 + [False] * 5


def test_time_window_only_sees_frames_inside(clip):
    out = read_video(clip, num_frames=4, start_sec=1.0, end_sec=2.0)
    assert all(25 <= i < 50 for i in frame_index(out.frames))
    assert (out.timestamps >= 1.0).all() and (out.timestamps < 2.0).all()
    before_event = read_video(clip, num_frames=4, end_sec=0.8)  # e.g. only what happens before an event
    assert max(frame_index(before_event.frames)) < 20
    clamped = read_video(clip, num_frames=4, start_sec=3.0, end_sec=99.0)
    assert all(75 <= i < 100 for i in frame_index(clamped.frames))


def test_window_past_the_end_is_an_error(clip):
    with pytest.raises(VideoReadError, match="past the end"):
        read_video(clip, num_frames=4, start_sec=10.0)


@pytest.mark.parametrize("pad", ["repeat", "zero"])
def test_short_clip_pads_and_masks(tmp_path, pad):
    path = tmp_path / "short.mp4"
    write_video(path, coded_frames(5), fps=25)
    out = read_video(path, num_frames=8, pad=pad)
    assert out.frame_mask.tolist() == [True] * 5 + [False] * 3
    assert frame_index(out.frames[:5]) == [0, 1, 2, 3, 4]
    if pad == "repeat":
        assert torch.equal(out.frames[5:], out.frames[4:5].expand(3, -1, -1, -1))
    else:
        assert not out.frames[5:].any()
    assert out.timestamps[5:].tolist() == pytest.approx([out.timestamps[4].item()] * 3)


def test_window_shorter_than_num_frames(clip):
    out = read_video(clip, num_frames=8, start_sec=3.86)  # 3 frames left: 97, 98, 99 (at 3.88, 3.92, 3.96 s)
    assert frame_index(out.frames[out.frame_mask]) == [97, 98, 99]


def test_short_side_resize(clip):
    out = read_video(clip, num_frames=2, short_side=24)
    assert out.frames.shape == (2, 3, 24, 32)
    assert frame_index(out.frames) == [25, 75]


def test_argument_errors(clip):
    with pytest.raises(ValueError, match="fps"):
        read_video(clip, sampling="fps")
    with pytest.raises(ValueError, match="end_sec"):
        read_video(clip, start_sec=2.0, end_sec=1.0)
    with pytest.raises(ValueError, match="sampling"):
        read_video(clip, sampling="random")


# -------------------------------------------------------------------------------------- containers, odd streams


@pytest.mark.parametrize(
    ("codec", "fmt", "suffix", "options"),
    [
        ("libvpx-vp9", "webm", "webm", {"deadline": "realtime", "cpu-used": "8"}),
        ("libx264", "matroska", "mkv", {}),
        ("mpeg4", "avi", "avi", {"b": "2000000"}),  # the default bit rate smears flat frames
        ("libx264", "mpegts", "ts", {}),
    ],
)
def test_containers_and_codecs(tmp_path, codec, fmt, suffix, options):
    path = encode(tmp_path / f"clip.{suffix}", coded_frames(50), codec=codec, fmt=fmt, options=options)
    out = read_video(path, num_frames=5)
    assert frame_index(out.frames) == [5, 15, 25, 35, 45]
    assert out.timestamps.tolist() == pytest.approx([0.2, 0.6, 1.0, 1.4, 1.8], abs=1e-3)
    assert out.duration == pytest.approx(2.0, abs=0.05)


def test_stream_without_index_seeks_correctly(tmp_path):
    """MPEG-TS has no keyframe index: seeks rely on the keyframes seen while decoding."""
    path = encode(tmp_path / "long.ts", coded_frames(250, 32, 32), fmt="mpegts", options={"g": "25"})
    times, _ = full_decode(path)
    for seed in range(2):
        out = read_video(path, num_frames=4, sampling="segment", generator=torch.Generator().manual_seed(seed))
        starts = [t - times[0] for t in times]
        expected = [max(i for i, t in enumerate(starts) if t <= target + 1e-6) for target in out.timestamps.tolist()]
        assert frame_index(out.frames) == expected
        assert [i // 63 for i in expected] == [0, 1, 2, 3]


def test_variable_frame_rate(tmp_path):
    # 40 frames, 40 ms apart for the first half and 120 ms apart after: timestamps in ms
    pts = [40 * i for i in range(20)] + [800 + 120 * i for i in range(20)]
    path = encode(tmp_path / "vfr.mkv", coded_frames(40), fmt="matroska", pts=pts, time_base=Fraction(1, 1000))
    times, _ = full_decode(path)
    assert times == pytest.approx([p / 1000 for p in pts])
    out = read_video(path, num_frames=6)
    duration = out.duration
    for t, i in zip(out.timestamps.tolist(), frame_index(out.frames)):
        assert t == pytest.approx(pts[i] / 1000, abs=1e-3)  # timestamps are the frames' own
    targets = [(k + 0.5) * duration / 6 for k in range(6)]
    expected = [max(i for i, p in enumerate(pts) if p / 1000 <= target + 1e-6) for target in targets]
    assert frame_index(out.frames) == expected  # by time, not by frame count
    fixed = read_video(path, num_frames=4, sampling="fps", fps=5.0, start_sec=1.0)
    assert frame_index(fixed.frames) == [21, 23, 25, 26]  # 1.0, 1.2, 1.4, 1.6 s -> frames on screen then


def test_missing_duration_raw_h264(tmp_path):
    path = encode(tmp_path / "raw.h264", coded_frames(50), fmt="h264")
    with av.open(str(path)) as container:  # the premise: nothing in the metadata says how long it is
        stream = container.streams.video[0]
        assert stream.duration is None and not stream.frames and container.duration is None
    out = read_video(path, num_frames=5)
    assert out.duration == pytest.approx(2.0)
    assert frame_index(out.frames) == [5, 15, 25, 35, 45]
    from_bytes = read_video(path.read_bytes(), num_frames=5)
    assert torch.equal(from_bytes.frames, out.frames)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_metadata_makes_frames_upright(tmp_path, degrees):
    frames = coded_frames(4)
    frames[:, :8, :8] = 255  # a white corner shows the orientation
    plain_path = encode(tmp_path / "plain.mp4", frames)
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):  # PyAV 15 (lmms-eval's pin) reads it only
        pytest.skip("this PyAV cannot write a display matrix (set_display_rotation is PyAV >= 16)")
    # the same packets with a display matrix: two separate libx264 encodes of the same frames may differ by a few
    # levels (its automatic threads and mb-tree), which once failed this test in a full run
    with av.open(str(plain_path)) as src, av.open(str(tmp_path / "rot.mp4"), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        stream.set_display_rotation(degrees)
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:  # the demuxer's final flush packet
                packet.stream = stream
                dst.mux(packet)
    plain = read_video(plain_path, num_frames=4).frames
    rotated = read_video(tmp_path / "rot.mp4", num_frames=4).frames
    expected = torch.rot90(plain, k=degrees // 90, dims=(2, 3))  # display matrix: counter-clockwise degrees
    assert torch.equal(rotated, expected)
    if degrees != 180:
        assert rotated.shape[2:] == (64, 48)


# ------------------------------------------------------------------------------------------ bytes and file-likes


def test_bytes_and_file_like_sources(clip):
    expected = read_video(clip, num_frames=4).frames
    data = clip.read_bytes()
    assert torch.equal(read_video(data, num_frames=4).frames, expected)
    assert torch.equal(read_video(io.BytesIO(data), num_frames=4).frames, expected)
    with open(clip, "rb") as handle:
        assert torch.equal(read_video(handle, num_frames=4).frames, expected)

    class Pipe(io.RawIOBase):  # a stream that cannot seek, like a socket or a tar member being streamed
        def __init__(self):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = self.inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    assert torch.equal(read_video(io.BufferedReader(Pipe()), num_frames=4).frames, expected)


# ------------------------------------------------------------------------------------------------------ bad input


def assert_read_error(source, reason: str, name: str) -> VideoReadError:
    with pytest.raises(VideoReadError) as info:
        read_video(source, num_frames=4)
    error = info.value
    assert name in str(error) and name in error.path
    assert reason in error.reason, error.reason
    return error


def test_missing_file(tmp_path):
    assert_read_error(tmp_path / "nope.mp4", "file not found", "nope.mp4")


def test_zero_bytes(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert_read_error(tmp_path / "empty.mp4", "empty", "empty.mp4")
    with pytest.raises(VideoReadError, match="empty"):
        read_video(b"")
    with pytest.raises(VideoReadError, match="shard-7/clip.mp4"):
        read_video(io.BytesIO(b""), name="shard-7/clip.mp4")


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    assert_read_error(tmp_path / "notes.mp4", "not a readable video", "notes.mp4")


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_truncated_with_index_first(tmp_path, clip, fraction):
    data = clip.read_bytes()  # write_video puts the index first, so a cut file still opens
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * fraction)])
    assert_read_error(tmp_path / "cut.mp4", "truncated", "cut.mp4")


def test_truncated_with_index_last(tmp_path):
    path = encode(tmp_path / "whole.mp4", coded_frames(50))  # PyAV's default mp4 writes the index at the end
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert_read_error(tmp_path / "cut.mp4", "not a readable video", "cut.mp4")


def test_audio_only(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(20):
            samples = (0.1 * np.sin(np.arange(1024) * 0.05 + k)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert_read_error(path, "no video stream", "voice.m4a")


def test_no_decodable_frame_garbage_packets(tmp_path):
    path = tmp_path / "garbage.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("h264", rate=25)  # declared H.264 but every packet is noise
        stream.width, stream.height, stream.time_base = 64, 48, Fraction(1, 1000)
        for i in range(10):
            packet = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, 40 * i, 40 * i, Fraction(1, 1000)
            container.mux(packet)
    assert_read_error(path, "no decodable frame", "garbage.mkv")


def test_no_decodable_frame_empty_stream(tmp_path):
    path = tmp_path / "hollow.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 48
        container.start_encoding()  # header only, no packet
    assert_read_error(path, "no decodable frame", "hollow.mkv")
