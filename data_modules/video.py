"""Video I/O on PyAV: sample ``T`` frames from a path, bytes or a file-like object, and write H.264 mp4 files.

Reading is built to take a few frames from a clip without decoding all of it:

- one decoding thread by default: DataLoader workers already decode clips in parallel, and FFmpeg's frame threads,
  stopped before the end of a stream as sampled decoding does, are a known source of decoder hangs in such workers
  (``threads > 1`` turns frame + slice threading on, e.g. for a long video read in the main process);
- a seek to the keyframe before the next wanted time only when that keyframe lies beyond the frames decoded so far
  (otherwise decoding forward is cheaper); keyframe times come from the container index when it has one, else from
  the keyframes seen while decoding;
- packets far before the next wanted time are decoded with ``skip_frame = "NONREF"``: frames that nothing references
  are dropped by the decoder, which cannot change any other frame, and no wanted frame lies in that range;
- only the returned frames are converted to RGB, resized in the same ``sws_scale`` call.

Every timestamp here is in seconds from the start of the video stream. A returned frame for a wanted time ``t`` is
the frame on screen at ``t`` (the last frame whose timestamp is ``<= t``), so variable frame rate is handled by time.
"""

from __future__ import annotations

import bisect
import collections
import functools
import io
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
import torch

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 30.0  # seconds FFmpeg may wait for data (open, then each read) before giving up: no hangs
SKIP_MARGIN_FRAMES = 2.5  # packets more than this many frame intervals before a wanted time drop non-reference frames
_EPS = 1e-6


class VideoReadError(RuntimeError):
    """A video (or image) that cannot be read; ``path`` names the input and ``reason`` says what is wrong with it."""

    def __init__(self, path: str, reason: str, *, kind: Literal["video", "image"] = "video") -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot read {kind} {path}: {reason}")


@dataclass
class DecodedClip:
    frames: torch.Tensor  # uint8 (T, C, H, W) RGB, upright
    timestamps: torch.Tensor  # float32 (T,) seconds from the stream start; padding repeats the last real time
    frame_mask: torch.Tensor  # bool (T,) False for padding frames of a clip shorter than T
    fps: float  # average frame rate of the stream
    duration: float  # seconds of the whole video stream (not of the window)
    failed_packets: int = 0  # packets that failed to decode and were skipped (a partly damaged file)


@dataclass
class _Info:
    start: float  # stream start in container seconds; subtracted from every timestamp
    duration: float
    duration_source: Literal["stream", "frames", "container", "scan"]
    fps: float
    keyframes: list[float] | None  # relative seconds, sorted; None when the container has no usable index
    timestamps: bool = True  # False for raw streams without any (then no seeking: times come from the frame count)


def read_video(
    source: str | os.PathLike | bytes | BinaryIO,
    num_frames: int = 8,
    *,
    sampling: Literal["uniform", "segment", "fps"] = "uniform",
    fps: float | None = None,
    start_sec: float | None = None,
    end_sec: float | None = None,
    short_side: int | None = None,
    pad: Literal["repeat", "zero"] = "repeat",
    generator: torch.Generator | None = None,
    name: str | None = None,
    threads: int = 1,
) -> DecodedClip:
    """Decode ``num_frames`` frames of the window ``[start_sec, end_sec)`` of a video.

    Sampling: ``"uniform"`` takes the centre of ``num_frames`` equal segments of the window; ``"segment"`` one random
    time per segment (``generator`` or torch's global RNG, for training); ``"fps"`` takes times ``start + i / fps``.
    A window with fewer frames than ``num_frames`` (or an ``fps`` run that reaches its end) returns every real frame
    in order, then padding (``pad="repeat"`` repeats the last frame, ``"zero"`` adds black frames) marked False in
    ``frame_mask``. ``short_side`` resizes so the shorter side has that many pixels, keeping the aspect ratio.
    Frames come out upright: the stream's rotation (display matrix) is applied. ``threads`` is the number of FFmpeg
    decoding threads (1: decode on the calling thread, what DataLoader workers should use; 0: one per core).

    Any unreadable input raises ``VideoReadError`` naming ``name`` (default: the path) and the reason.
    """
    label = name or _label(source)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in ("uniform", "segment", "fps"):
        raise ValueError(f"sampling must be 'uniform', 'segment' or 'fps', got {sampling!r}")
    if sampling == "fps" and (fps is None or fps <= 0):
        raise ValueError(f"sampling='fps' needs fps > 0, got fps={fps}")
    if sampling != "fps" and fps is not None:
        raise ValueError(f"fps={fps} is only used with sampling='fps' (got sampling={sampling!r})")
    if start_sec is not None and start_sec < 0:
        raise ValueError(f"start_sec must be >= 0, got {start_sec}")
    if end_sec is not None and end_sec <= (start_sec or 0.0):
        raise ValueError(f"end_sec ({end_sec}) must be greater than start_sec ({start_sec or 0.0})")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if pad not in ("repeat", "zero"):
        raise ValueError(f"pad must be 'repeat' or 'zero', got {pad!r}")

    opener = _opener(source, label)
    try:
        container = opener()
        try:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise VideoReadError(label, f"no video stream (the file holds: {', '.join(kinds)})")
            info = _probe(container, label)
            if info.duration_source == "scan":  # the scan read to the end; start again from a fresh open
                container.close()
                container = opener()
            return _read(
                container,
                info,
                label,
                num_frames,
                sampling,
                fps,
                start_sec,
                end_sec,
                short_side,
                pad,
                generator,
                threads,
            )
        finally:
            container.close()
    except VideoReadError:
        raise
    except av.error.EOFError as e:
        raise VideoReadError(label, "no decodable frame: the data ends before the first frame (truncated?)") from e
    except av.error.FFmpegError as e:
        raise VideoReadError(label, f"not a readable video ({type(e).__name__}: {e.strerror or e})") from e


def _pil_pixels(image, size: tuple[int, int] | None, short_side: int | None) -> torch.Tensor:
    """uint8 (3, H, W) of a PIL image: at ``size`` (W, H) if given, else its short side at ``short_side``."""
    from PIL import Image

    image = image.convert("RGB")
    if size is None and short_side is not None:
        scale = short_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size is not None and size != image.size:
        image = image.resize(size, Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def frames_clip(
    images, num_frames: int, *, short_side: int | None = None, pad: Literal["repeat", "zero"] = "repeat"
) -> DecodedClip:
    """A clip from a sequence of frames (PIL images, e.g. a benchmark's extracted frames): ``num_frames`` of them
    sampled as ``read_video``'s ``"uniform"`` does (the centre of equal segments); with fewer, all of them, then
    padding. All frames take the first one's (resized) size; timestamps are frame indices (``fps`` 1)."""
    if not images:
        raise ValueError("frames_clip needs at least one frame")
    n = len(images)
    idx = [int((i + 0.5) * n / num_frames) for i in range(num_frames)] if n >= num_frames else list(range(n))
    first = _pil_pixels(images[idx[0]], None, short_side)
    size = (first.shape[2], first.shape[1])
    real = torch.stack([first] + [_pil_pixels(images[i], size, None) for i in idx[1:]])  # (R, 3, H, W)
    fill = real[-1:].expand(num_frames - len(idx), -1, -1, -1)
    frames = torch.cat([real, torch.zeros_like(fill) if pad == "zero" else fill])  # (T, 3, H, W)
    times = torch.tensor(idx + [idx[-1]] * (num_frames - len(idx)), dtype=torch.float32)
    return DecodedClip(
        frames=frames, timestamps=times, frame_mask=torch.arange(num_frames) < len(idx), fps=1.0, duration=float(n)
    )


def image_clip(
    image,
    num_frames: int,
    *,
    real_frames: int = 1,
    short_side: int | None = None,
    pad: Literal["repeat", "zero"] = "repeat",
) -> DecodedClip:
    """A PIL image as a clip of ``num_frames`` frames: the image ``real_frames`` times (True in ``frame_mask``),
    then padding as in :func:`read_video`. Timestamps are 0, ``fps`` 1 and ``duration`` 0."""
    if not 1 <= real_frames <= num_frames:
        raise ValueError(f"real_frames must be in [1, num_frames={num_frames}], got {real_frames}")
    clip = frames_clip([image] * real_frames, num_frames, short_side=short_side, pad=pad)
    return DecodedClip(
        frames=clip.frames, timestamps=torch.zeros(num_frames), frame_mask=clip.frame_mask, fps=1.0, duration=0.0
    )


def read_image(
    path: str | os.PathLike,
    num_frames: int,
    *,
    real_frames: int = 1,
    short_side: int | None = None,
    pad: Literal["repeat", "zero"] = "repeat",
) -> DecodedClip:
    """An image file (any format Pillow reads) as a clip, see :func:`image_clip`. A missing or undecodable file
    raises ``VideoReadError`` (reason ``"file not found"`` or ``"not a readable image ..."``)."""
    from PIL import Image, UnidentifiedImageError

    label = os.fspath(path)
    if not Path(label).is_file():
        raise VideoReadError(label, "file not found", kind="image")
    try:
        with Image.open(label) as im:
            im.load()
            return image_clip(im, num_frames, real_frames=real_frames, short_side=short_side, pad=pad)
    except (UnidentifiedImageError, OSError) as e:
        raise VideoReadError(label, f"not a readable image ({type(e).__name__}: {e})", kind="image") from e


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor | np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    keyframe_interval: int | None = None,
    threads: int = 1,
) -> None:
    """Write uint8 RGB frames ``(T, H, W, C)`` to an H.264 (yuv420p) mp4 with its index at the front.

    ``keyframe_interval`` is the GOP length in frames (None: libx264's default, 250). H and W must be even (yuv420p).
    ``threads`` is libx264's thread count. The bitstream depends on it, and libx264's automatic choice (0) depends on
    the cores the process may use, so the default 1 makes the bytes a function of the frames alone on any machine.
    """
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or array.shape[0] == 0:
        raise ValueError(
            f"write_video({path}): frames must be uint8 (T>0, H, W, 3) RGB, got {array.dtype} {tuple(array.shape)}"
        )
    _, height, width, _ = array.shape
    if height % 2 or width % 2:
        raise ValueError(f"write_video({path}): H.264 yuv420p needs even height and width, got {height}x{width}")
    if not fps > 0:
        raise ValueError(f"write_video({path}): fps must be > 0, got {fps}")
    if threads < 0:
        raise ValueError(f"write_video({path}): threads must be >= 0, got {threads}")
    # mbtree=0: libx264's macroblock-tree rate control reads memory it has not written on small frames, so identical
    # frames gave different bitstreams depending on what the process had allocated before (half of 10 clips over 5
    # encodes after freeing random-filled buffers; 0 of 10 without mbtree). It only redistributes bits between frames.
    options = {"crf": str(crf), "threads": str(threads), "x264-params": "mbtree=0"}
    if keyframe_interval is not None:
        options |= {"g": str(keyframe_interval), "keyint_min": str(keyframe_interval)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(os.fspath(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1) / stream.codec_context.framerate
        for i, image in enumerate(array):
            frame = _yuv420p_frame(image)
            frame.pts = i  # explicit timestamps: without them the encoder's rate control reads unset values
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@functools.cache
def _reformat_takes_threads() -> bool:
    """PyAV >= 16 lets ``reformat`` use several swscale threads (we ask for 1); PyAV 15 (what lmms-eval 0.7.3 pins)
    has no such argument and always converts on one thread."""
    try:
        av.VideoFrame(2, 2, "rgb24").reformat(format="yuv420p", threads=1)
    except TypeError:
        return False
    return True


def _one_thread() -> dict:
    """``reformat`` / ``to_ndarray`` keywords for a conversion on the calling thread. PyAV >= 16's default (0) gives
    swscale a pool of slice threads, and a DataLoader worker forked after its parent converted a frame waited on
    that pool forever (``avpriv_slicethread_execute``, seen in gdb on a fresh clone's test run)."""
    return {"threads": 1} if _reformat_takes_threads() else {}


def _yuv420p_frame(image: np.ndarray) -> av.VideoFrame:
    """RGB (H, W, 3) -> a yuv420p frame whose row padding is zero.

    Letting the encoder convert, or filling a frame with `from_ndarray`, leaves the bytes past each row's width
    uninitialised, and libx264's output then varies from run to run; with zeroed padding it is a function of the image.
    """
    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    yuv = rgb.reformat(format="yuv420p", **_one_thread())
    out = av.VideoFrame(yuv.width, yuv.height, "yuv420p")
    for src, dst in zip(yuv.planes, out.planes):
        rows = np.frombuffer(memoryview(src), np.uint8).reshape(src.height, src.line_size)[:, : src.width]
        padded = np.zeros((dst.height, dst.line_size), np.uint8)
        padded[:, : src.width] = rows
        dst.update(padded.tobytes())
    return out


# ---------------------------------------------------------------------------------------------------------- opening


def _label(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file-like object>"))


def _opener(source, label: str):
    """Check the source and return a function that opens it afresh (a missing-duration scan reads to the end)."""
    kwargs = {"mode": "r", "timeout": (OPEN_TIMEOUT_S, OPEN_TIMEOUT_S)}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise VideoReadError(label, "file not found")
        if not path.is_file():
            raise VideoReadError(label, "not a regular file")
        if path.stat().st_size == 0:
            raise VideoReadError(label, "empty file (0 bytes)")
        return lambda: av.open(os.fspath(path), **kwargs)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        if getattr(source, "seekable", lambda: False)():
            offset = source.tell()
            if not source.read(1):
                raise VideoReadError(label, "empty input (0 bytes)")

            def reopen():
                source.seek(offset)
                return av.open(source, **kwargs)

            return reopen
        data = source.read()  # a pipe cannot seek, and PyAV needs to
    else:
        raise TypeError(f"read_video: source must be a path, bytes or a binary file-like object, got {type(source)}")
    if not data:
        raise VideoReadError(label, "empty input (0 bytes)")
    return lambda: av.open(io.BytesIO(data), **kwargs)


def _probe(container, label: str) -> _Info:
    """Frame rate, start and duration of the first video stream.

    Duration comes from, in order: the stream's duration; its frame count / frame rate; the container's duration;
    a demux-only scan of every packet (no decoding; max pts + packet duration, or packet count / frame rate).
    """
    stream = container.streams.video[0]
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        duration, source = float(stream.duration * tb), "stream"
    elif stream.frames and fps:
        duration, source = stream.frames / fps, "frames"
    elif container.duration:
        duration, source = container.duration / av.time_base - start, "container"
    else:
        duration, fps, start, timestamps = _scan(container, stream, fps, label)
        source = "scan"
    if not fps:
        fps = (stream.frames / duration) if stream.frames and duration > 0 else 25.0
        log.warning("%s: no frame rate in the metadata; using %.3f fps", label, fps)
    if duration <= 0:
        raise VideoReadError(label, f"no decodable frame (duration {duration:.3f}s from {source})")
    keyframes = None
    # PyAV >= 16 exposes the container index; PyAV 15 (lmms-eval's pin) does not: keyframes are then learned while
    # decoding, as for containers without an index.
    entries = (getattr(stream, "index_entries", None) or []) if tb else []
    if entries:
        keyframes = sorted(float(e.timestamp * tb) - start for e in entries if e.is_keyframe) or None
        if keyframes and keyframes[0] < 0:  # mp4 indexes decode times: shift so the first keyframe shows at 0
            keyframes = [k - keyframes[0] for k in keyframes]
    return _Info(
        start=start,
        duration=duration,
        duration_source=source,
        fps=fps,
        keyframes=keyframes,
        timestamps=source != "scan" or timestamps,
    )


def _scan(container, stream, fps: float, label: str) -> tuple[float, float, float, bool]:
    """Demux (no decode) every packet to find the end time; returns (duration, fps, start, has timestamps)."""
    tb = stream.time_base
    count, end, first = 0, None, None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            count += 1
            if packet.pts is not None and tb:
                t = float((packet.pts + (packet.duration or 0)) * tb)
                end = t if end is None else max(end, t)
                first = float(packet.pts * tb) if first is None else min(first, float(packet.pts * tb))
    except av.error.FFmpegError as e:
        log.warning("%s: packet scan stopped early (%s); using the %d packets read", label, e, count)
    if count == 0:
        raise VideoReadError(label, "no decodable frame (the video stream holds no packets)")
    if not fps:
        fps = 25.0
        log.warning("%s: no frame rate in the metadata; assuming %.1f fps", label, fps)
    if end is not None:
        return end - first, fps, first, True
    return count / fps, fps, 0.0, False  # no timestamps at all (e.g. a raw H.264 stream): frames are 1 / fps apart


# --------------------------------------------------------------------------------------------------------- sampling


def _read(
    container, info: _Info, label, num_frames, sampling, fps, start_sec, end_sec, short_side, pad, generator, threads
) -> DecodedClip:
    t0 = start_sec or 0.0
    if t0 >= info.duration:
        raise VideoReadError(label, f"start_sec={t0} is at or past the end of the video ({info.duration:.3f}s)")
    t1 = info.duration if end_sec is None else min(end_sec, info.duration)
    seg = (t1 - t0) / num_frames
    offsets = torch.rand(num_frames, generator=generator).tolist() if sampling == "segment" else [0.5] * num_frames
    if sampling == "fps":
        count = max(1, min(num_frames, math.ceil((t1 - t0) * fps - _EPS)))
        targets = [t0 + i / fps for i in range(count)]
    else:
        targets = [t0 + (i + u) * seg for i, u in enumerate(offsets)]

    decoder = _Decoder(container, info, label, threads)
    expected = (t1 - t0) * info.fps  # frames in the window, from the metadata
    picks = None
    if sampling == "fps" or expected > 2 * num_frames:
        picks = decoder.pick(targets)
        if (
            sampling != "fps"
            and len({t for t, _ in picks}) < len(picks)
            and expected <= 8 * num_frames
            and decoder.rewind()
        ):
            picks = None  # two targets fell on one frame: look at all frames and pick by index instead
    if picks is None:
        window = decoder.collect(t0, t1)
        if len(window) <= num_frames:
            picks = window
        else:
            picks = _at_or_before(window, targets)
            if len({t for t, _ in picks}) < len(picks):  # variable frame rate: pick by index instead of time
                n = len(window)
                bounds = [i * n // num_frames for i in range(num_frames + 1)]
                picks = [window[lo + int(u * (hi - lo))] for lo, hi, u in zip(bounds, bounds[1:], offsets)]

    images = _to_tensor([f for _, f in picks], short_side)  # (R, C, H, W)
    real = images.shape[0]
    times = torch.tensor([t for t, _ in picks], dtype=torch.float32)
    if real < num_frames:
        fill = images[-1:] if pad == "repeat" else torch.zeros_like(images[-1:])
        images = torch.cat([images, fill.expand(num_frames - real, -1, -1, -1)])
        times = torch.cat([times, times[-1:].expand(num_frames - real)])
    mask = torch.arange(num_frames) < real
    if decoder.errors:
        log.warning("%s: %d packets failed to decode and were skipped", label, decoder.errors)
    return DecodedClip(
        frames=images.contiguous(),
        timestamps=times,
        frame_mask=mask,
        fps=info.fps,
        duration=info.duration,
        failed_packets=decoder.errors,
    )


def _at_or_before(frames: list[tuple[float, av.VideoFrame]], targets: list[float]):
    """The frame on screen at each target time (the first frame for a time before it)."""
    times = [t for t, _ in frames]
    return [frames[max(0, bisect.bisect_right(times, target + _EPS) - 1)] for target in targets]


class _Decoder:
    """Decodes forward from the current position and seeks when the next wanted time lies past the next keyframe."""

    def __init__(self, container, info: _Info, label: str, threads: int) -> None:
        self.container, self.info, self.label = container, info, label
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads
        self.codec = self.stream.codec_context
        self.codec.thread_count = threads
        self.tb = self.stream.time_base
        self.tb_float = float(self.tb) if self.tb else 0.0  # Fraction arithmetic per packet is slow
        self.can_seek = bool(self.tb) and info.timestamps
        self.pos = 0.0  # time of the last frame handed out (the stream start before any)
        self.pending: collections.deque = collections.deque()  # decoded frames not yet handed out
        self.last_decoded: float | None = None
        self.seek_bias = 0.0  # how far before a wanted time to seek, for demuxers that land after it (MPEG-TS)
        self.seeks, self.max_seeks = 0, 0  # max_seeks is set per call: a bound that rules out seek loops
        self.gop_floor = 5.0  # keyframe spacing assumed when neither the index nor decoding has shown it
        self.seen_keys: set[float] = set()  # keyframes met while decoding, for streams without an index
        self.skipping = False  # whether the decoder drops non-reference frames now
        self.errors = 0
        self.last_packet: float | None = None  # time of the latest packet demuxed, to tell a file that stops early

    # A seek pays for decoding from the keyframe before the target; decoding forward pays from the current position.
    # So seek only when that keyframe lies a few frames past the current position.
    def _should_seek(self, target: float) -> bool:
        if not self.can_seek:
            return False
        key = self._key_before(target)
        return key is not None and key > self.pos + 3.0 / self.info.fps

    def _key_before(self, target: float) -> float | None:
        keys = self.info.keyframes
        if keys is None:
            keys = sorted(self.seen_keys)
            if len(keys) < 2:  # keyframe spacing unknown
                return target - self.gop_floor if target - self.gop_floor > self.pos else None
            gop = max(b - a for a, b in zip(keys, keys[1:]))
            return keys[-1] + math.floor((target - keys[-1]) / gop) * gop if target > keys[-1] else None
        i = bisect.bisect_right(keys, target + _EPS) - 1
        return keys[i] if i >= 0 else None

    def _seek(self, t: float) -> None:
        """Seek to the keyframe before ``t``; past the seek budget, go back to the start and only decode forward."""
        self.seeks += 1
        if self.seeks > self.max_seeks:
            log.debug("%s: %d seeks; decoding forward from the start", self.label, self.seeks)
            self.can_seek, t = False, -1.0
        try:
            self.container.seek(
                int((max(t - self.seek_bias, 0.0) + self.info.start) / self.tb), stream=self.stream, backward=True
            )
        except av.error.FFmpegError as e:  # e.g. a format without seeking: decode forward instead
            log.debug("%s: seek to %.3fs failed (%s); decoding forward", self.label, t, e)
            self.can_seek = False
            return
        self.pending.clear()
        self.last_decoded = None

    def rewind(self) -> bool:
        """Go back to the stream start for a second pass; False where the stream cannot seek."""
        if not self.can_seek:
            return False
        self.max_seeks = self.seeks + 1
        self._seek(0.0)
        if not self.can_seek:
            return False
        self.pos, self.skipping = 0.0, False
        self.codec.skip_frame = "DEFAULT"
        return True

    def _frames(self, wanted):
        """Yield (time, frame) from the current position; ``wanted()`` is the next time a frame is needed at."""
        start, tb, fps = self.info.start, self.tb_float, self.info.fps
        margin = SKIP_MARGIN_FRAMES / fps
        while self.pending:  # frames decoded before the caller last stopped
            yield self._hand_out()
        for packet in self.container.demux(self.stream):
            # Frames no other frame references can be dropped while far before the next wanted time.
            t_packet = None if packet.pts is None else packet.pts * tb - start
            if t_packet is not None:
                self.last_packet = t_packet if self.last_packet is None else max(self.last_packet, t_packet)
            skip = t_packet is not None and t_packet < wanted() - margin
            if skip != self.skipping:
                self.codec.skip_frame = "NONREF" if skip else "DEFAULT"
                self.skipping = skip
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                self.errors += 1
                log.debug("%s: packet at pts %s failed to decode: %s", self.label, packet.pts, e)
                continue
            for frame in frames:
                if frame.pts is not None and tb:
                    t = frame.pts * tb - start
                else:  # no timestamps (raw streams): frames are 1 / fps apart
                    t = 0.0 if self.last_decoded is None else self.last_decoded + 1.0 / fps
                    self.can_seek = False
                self.last_decoded = t
                self.pending.append((t, frame))
            while self.pending:
                yield self._hand_out()

    def _hand_out(self) -> tuple[float, av.VideoFrame]:
        t, frame = self.pending.popleft()
        self.pos = t
        if frame.key_frame:
            self.seen_keys.add(round(t, 6))
        return t, frame

    def pick(self, targets: list[float]) -> list[tuple[float, av.VideoFrame]]:
        """The frame on screen at each of the sorted ``targets``."""
        out: list[tuple[float, av.VideoFrame]] = []
        n, back = len(targets), 0.0
        self.max_seeks = self.seeks + 2 * n + 4
        seek_to = targets[0] if self._should_seek(targets[0]) else None
        while len(out) < n:
            prev, sought, pos_before = None, seek_to, self.pos
            if seek_to is not None:
                self._seek(seek_to)
            seek_to = None
            for t, frame in self._frames(lambda: targets[len(out)]):
                target = targets[len(out)]
                if sought is not None and self.can_seek:  # the first frame after a seek
                    if t > target + _EPS and sought - self.seek_bias > 0:  # landed past the target: seek earlier
                        # some demuxers land on the keyframe after the time asked for: step back further each time
                        back = 2 * back if back else t - target + 2.0 / self.info.fps
                        self.seek_bias += back
                        seek_to = sought
                        break
                    if t <= pos_before + _EPS:  # landed where we already were: the keyframe guess was wrong
                        self.info.keyframes = None
                        self.gop_floor = max(self.gop_floor, 2.0 * (target - t))
                    sought, back = None, 0.0
                while len(out) < n and t > targets[len(out)] + _EPS:
                    out.append(prev or (t, frame))
                if len(out) == n:
                    break
                prev = (t, frame)
                if self._should_seek(targets[len(out)]):
                    seek_to = targets[len(out)]
                    break
            else:  # end of stream
                if prev is None:
                    raise VideoReadError(self.label, self._no_frame_reason())
                self._check_end(prev[0], targets[len(out)])
                out.extend([prev] * (n - len(out)))
        return out

    def collect(self, t0: float, t1: float) -> list[tuple[float, av.VideoFrame]]:
        """Every frame in ``[t0, t1)``, or the one on screen at ``t0`` if none starts in the window."""
        self.max_seeks = self.seeks + 2
        seeked = self._should_seek(t0)
        if seeked:
            self._seek(t0)
        prev, window = None, []
        for t, frame in self._frames(lambda: t0):
            if seeked and self.can_seek:  # the first frame after the seek
                seeked = False
                if t > t0 + _EPS:  # landed past the window start: decode from the very start instead
                    self._seek(0.0)
                    return self.collect(t0, t1)
            if t >= t1 - _EPS:
                break
            if t >= t0 - _EPS:
                window.append((t, frame))
            else:
                prev = (t, frame)
        else:
            last = window[-1][0] if window else prev[0] if prev else None
            if last is None:
                raise VideoReadError(self.label, self._no_frame_reason())
            self._check_end(last, t1 - 1.0 / self.info.fps)
        if not window:
            window = [prev] if prev else []
        if not window:
            raise VideoReadError(self.label, self._no_frame_reason())
        return window

    def _no_frame_reason(self) -> str:
        """Why the stream ended without a frame: the file stops early (truncated) or its packets do not decode."""
        failed = f"{self.errors} packets failed to decode"
        if self.last_packet is None or self.last_packet + self._tolerance() < self.info.duration:
            last = "no packet" if self.last_packet is None else f"packets end at {self.last_packet:.3f}s"
            return (
                f"truncated: {last} but the {self.info.duration_source} metadata says "
                f"{self.info.duration:.3f}s; no decodable frame ({failed})"
            )
        return f"no decodable frame ({failed if self.errors else 'the decoder returned none'})"

    def _tolerance(self) -> float:
        tolerance = max(2.5 / self.info.fps, 0.25)
        if self.info.duration_source == "container":  # may count a longer audio track
            tolerance = max(tolerance, 1.0, 0.05 * self.info.duration)
        return tolerance

    def _check_end(self, last: float, wanted: float) -> None:
        """The stream ended at ``last``: fine if the metadata agrees, a truncated file if it promised much more."""
        if wanted > last + self._tolerance():
            raise VideoReadError(
                self.label,
                f"truncated: frames end at {last:.3f}s but the {self.info.duration_source} metadata says "
                f"{self.info.duration:.3f}s ({self.errors} packets failed to decode)",
            )


def _to_tensor(frames: list[av.VideoFrame], short_side: int | None) -> torch.Tensor:
    """RGB uint8 (R, C, H, W), upright, all at the first frame's (resized) size."""
    first = frames[0]
    width, height = first.width, first.height
    if short_side is not None:
        scale = short_side / min(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    smaller = width * height < first.width * first.height
    cache: dict[int, torch.Tensor] = {}
    out = []
    for frame in frames:
        if id(frame) not in cache:
            array = frame.to_ndarray(
                format="rgb24",
                width=width,
                height=height,
                interpolation="AREA" if smaller else "BILINEAR",
                **_one_thread(),
            )  # (H, W, C)
            turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns that make it upright
            if turns:
                array = np.rot90(array, turns)
            cache[id(frame)] = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        out.append(cache[id(frame)])
    return torch.stack(out)
