"""Video decoding with PyAV: `read_frames(path, num_frames)` samples frames evenly over the whole video.

Every check that can fail (the path, the container, its video stream, the frame count, `num_frames`) runs
before any frame is decoded, and raises `VideoError` saying what was wrong and what to do. Only the sampled
frames are converted to RGB; the others are decoded and dropped (decoding is sequential, so a long video costs
about one pass of the decoder).

PyAV is an optional dependency (`pip install av`, or the `video` extra); it is imported on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VideoError

# FFmpeg demuxers that open files which are not videos: "tty" renders any text file as ANSI art frames.
_TEXT_FORMATS = {"tty"}
_IMAGE_FORMAT_SUFFIX = "_pipe"  # png_pipe, jpeg_pipe, webp_pipe, ...: a single still image
_HINT = "pass a video file such as .mp4, .mkv, .webm, .mov or .avi"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, read without decoding any frame.

    Attributes:
        path: the file.
        total_frames: frames in the video stream (from the container, or by counting its packets).
        fps: average frame rate, or None when the container does not give one.
        duration_s: duration in seconds, or None when unknown.
        width, height: frame size in pixels.
        codec: the video codec's name.
        container: the container format's name (FFmpeg's).
    """

    path: str
    total_frames: int
    fps: float | None
    duration_s: float | None
    width: int
    height: int
    codec: str
    container: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return {
            "path": self.path,
            "total_frames": self.total_frames,
            "fps": self.fps,
            "duration_s": self.duration_s,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "container": self.container,
        }


@dataclass(frozen=True)
class VideoClip:
    """Frames sampled from a video, with where they came from.

    Attributes:
        frames: uint8 array [F, H, W, 3], RGB.
        indices: index in the video of each sampled frame (increasing).
        info: the video's `VideoInfo`.
    """

    frames: np.ndarray
    indices: list[int] = field(default_factory=list)
    info: VideoInfo | None = None

    @property
    def timestamps(self) -> list[float] | None:
        """Time in seconds of each sampled frame, or None when the frame rate is unknown."""
        if self.info is None or not self.info.fps:
            return None
        return [i / self.info.fps for i in self.indices]

    def metadata(self) -> dict[str, Any]:
        """The clip as transformers' `VideoMetadata` fields (processors read the sampled fps from it)."""
        info = self.info
        return {
            "total_num_frames": info.total_frames if info else len(self.frames),
            "fps": info.fps if info else None,
            "width": int(self.frames.shape[2]),
            "height": int(self.frames.shape[1]),
            "duration": info.duration_s if info else None,
            "video_backend": "pyav",
            "frames_indices": list(self.indices),
        }


def sample_indices(total_frames: int, num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread evenly over `total_frames`: the centre of each of
    `num_frames` equal parts (all frames, in order, when the two are equal)."""
    _check_num_frames(num_frames)
    if num_frames > total_frames:
        raise VideoError(f"cannot sample {num_frames} frames from {total_frames}; pass num_frames <= {total_frames}.")
    return [int((i + 0.5) * total_frames / num_frames) for i in range(num_frames)]


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Open `path` and describe its video stream, without decoding any frame.

    Raises:
        VideoError: the path is missing or a directory, the file is empty, unreadable, text or a still image,
            or has no video stream or no frames.
    """
    path = _check_path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        return _info(container, stream, path)


def read_video(path: str | os.PathLike[str], num_frames: int) -> VideoClip:
    """Decode `num_frames` frames sampled evenly over the whole video at `path` (see `sample_indices`).

    Args:
        path: a video file in any format FFmpeg reads.
        num_frames: how many frames to return, >= 1 and at most the video's frame count.

    Returns:
        a `VideoClip`: frames [F, H, W, 3] uint8 RGB, their indices, and the video's `VideoInfo`.

    Raises:
        VideoError: bad `num_frames`, any problem `probe_video` reports, a video shorter than `num_frames`, or
            a decoding failure (corrupt or truncated file).
    """
    _check_num_frames(num_frames)
    info = probe_video(path)
    if num_frames > info.total_frames:
        raise VideoError(
            f"{info.path} has {info.total_frames} frame{'s' if info.total_frames != 1 else ''} but {num_frames} "
            f"were asked; pass num_frames <= {info.total_frames} (`--frames {info.total_frames}` on the command "
            "line), or use a longer video."
        )
    indices = sample_indices(info.total_frames, num_frames)
    frames, decoded = _decode(info, indices)
    if frames is None:
        # The container over-counted its frames (it happens with damaged or oddly muxed files): sample again
        # over the frames that really decode.
        if decoded < num_frames:
            raise VideoError(
                f"{info.path} claims {info.total_frames} frames but only {decoded} decode; pass num_frames <= "
                f"{decoded}, or repair the file (e.g. re-encode it with ffmpeg)."
            )
        indices = sample_indices(decoded, num_frames)
        info = VideoInfo(**{**info.to_dict(), "total_frames": decoded})
        frames, _ = _decode(info, indices)
        if frames is None:  # pragma: no cover - the file changed between the two passes
            raise VideoError(f"{info.path} decodes differently on each read; re-encode it and try again.")
    return VideoClip(frames=frames, indices=indices, info=info)


def read_video_at(path: str | os.PathLike[str], indices: list[int]) -> VideoClip:
    """Decode the frames at `indices` (0-based, in the order given, repeats allowed) of the video at `path`.

    Raises:
        VideoError: no or negative indices, any problem `probe_video` reports, an index past the last frame
            that decodes, or a decoding failure.
    """
    if not indices or min(indices) < 0:
        raise VideoError(f"pass frame indices >= 0 to read, got {list(indices)!r}.")
    info = probe_video(path)
    frames, decoded = _decode(info, list(indices))
    if frames is None:
        raise VideoError(
            f"{info.path} has {decoded} frames that decode, and frame {max(indices)} was asked; sample indices "
            f"below {decoded}, or repair the file (e.g. re-encode it with ffmpeg)."
        )
    return VideoClip(frames=frames, indices=list(indices), info=info)


def read_frames(path: str | os.PathLike[str], num_frames: int) -> np.ndarray:
    """`num_frames` frames sampled evenly over the whole video at `path`, as uint8 RGB [F, H, W, 3].

    Same checks and errors as `read_video`, which also returns the indices and the video's metadata.
    """
    return read_video(path, num_frames).frames


def _av() -> Any:
    try:
        import av
    except ImportError as err:  # pragma: no cover - av is installed with the `video` extra
        raise ImportError("reading videos needs PyAV: `pip install av` (or `pip install sharp-prune[video]`).") from err
    return av


def _check_num_frames(num_frames: object) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int | np.integer):
        raise VideoError(
            f"num_frames must be an int, got {type(num_frames).__name__} ({num_frames!r}); pass how many frames to "
            "sample, e.g. 32."
        )
    if num_frames < 1:
        raise VideoError(f"num_frames must be >= 1, got {num_frames}; pass how many frames to sample, e.g. 32.")


def _check_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise VideoError(f"the video path must be a str or a path, got {type(path).__name__}; pass a file path.")
    p = Path(path)
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise VideoError(f"video file not found: {p}{where}; check the path.")
    if p.is_dir():
        raise VideoError(f"{p} is a directory, not a video file; {_HINT} (a file inside it, for instance).")
    if not p.is_file():
        raise VideoError(f"{p} is not a regular file; {_HINT}.")
    if p.stat().st_size == 0:
        raise VideoError(f"{p} is empty (0 bytes); {_HINT}, and check that it was copied or downloaded completely.")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{p} cannot be read (permission denied); check the file's permissions.")
    return p


def _open(path: Path) -> Any:
    av = _av()
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoError(
            f"{path} cannot be read as a video ({reason}): it is corrupt, truncated, or not a format FFmpeg knows; "
            f"{_HINT}, or re-encode it (e.g. `ffmpeg -i {path.name} out.mp4`)."
        ) from err


def _video_stream(container: Any, path: Path) -> Any:
    av = _av()
    fmt = container.format.name
    if fmt in _TEXT_FORMATS:
        raise VideoError(f"{path} is a text file, not a video; {_HINT}.")
    if fmt.endswith(_IMAGE_FORMAT_SUFFIX) or fmt == "image2":
        raise VideoError(f"{path} is a still image ({fmt}), not a video; {_HINT}.")
    attached = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not (s.disposition & attached)]
    if not videos:
        kinds = sorted({s.type for s in container.streams})
        holds = f"only {', '.join(kinds)} stream(s)" if kinds else "no streams at all"
        raise VideoError(f"{path} has no video stream ({fmt} container with {holds}); {_HINT} that contains video.")
    return videos[0]


def _count_packets(container: Any, stream: Any) -> int:
    """Frames of `stream` counted from its packets (demuxing only, no decoding)."""
    av = _av()
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                count += 1
    except av.error.FFmpegError:
        pass  # a damaged tail: keep what was counted; decoding will tell the rest
    return count


def _info(container: Any, stream: Any, path: Path) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    total = stream.frames if stream.frames > 0 else _count_packets(container, stream)
    if total <= 0:
        raise VideoError(f"{path} has a video stream but no frames; pass a video with at least one frame.")
    ctx = stream.codec_context
    return VideoInfo(
        path=str(path),
        total_frames=int(total),
        fps=fps,
        duration_s=duration,
        width=int(ctx.width),
        height=int(ctx.height),
        codec=ctx.name,
        container=container.format.name,
    )


def _decode(info: VideoInfo, indices: list[int]) -> tuple[np.ndarray | None, int]:
    """Decode `info.path` up to the last wanted index and keep the wanted frames as RGB arrays.

    Returns (frames, decoded): frames is None when the stream ended before the last wanted index, and
    decoded is then the number of frames the stream really has.
    """
    av = _av()
    path = Path(info.path)
    wanted = set(indices)
    last = max(indices)
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    decoded = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in wanted:
                    if size is None:  # later frames are scaled to the first one's size if the stream changes size
                        size = (frame.width, frame.height)
                    kept[i] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                if i >= last:
                    break
        except av.error.FFmpegError as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise VideoError(
                f"{path} failed to decode after {decoded} frames ({reason}): the file is corrupt or truncated; "
                f"re-encode it (e.g. `ffmpeg -i {path.name} out.mp4`)."
            ) from err
    if len(kept) < len(indices):
        return None, decoded
    return np.stack([kept[i] for i in indices]), decoded
