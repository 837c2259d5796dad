"""Exception types shared by every stage.

Every message names the file or object concerned and says what the user can do next.
"""

from __future__ import annotations

import os


class SlidestreamError(Exception):
    """Base class of every error raised on purpose by slidestream."""


class SlideError(SlidestreamError):
    """A slide file could not be used.

    Parameters
    ----------
    path : str or os.PathLike
        The slide file concerned; always part of the message.
    reason : str
        What went wrong, in a few words.
    hint : str, optional
        What the user can do about it.
    """

    default_hint = "check the file, or skip it"

    def __init__(self, path: str | os.PathLike, reason: str, hint: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.hint = self.default_hint if hint is None else hint
        super().__init__(self.path, reason, self.hint)

    def __str__(self) -> str:
        msg = f"{self.path}: {self.reason}"
        if self.hint:
            msg += f" ({self.hint})"
        return msg


class UnsupportedSlideError(SlideError):
    """The file is not a slide format that slidestream can read."""

    default_hint = "convert it to a pyramidal TIFF/SVS, or open it with another reader"


class CorruptSlideError(SlideError):
    """The file looks like a supported slide but its contents cannot be decoded."""

    default_hint = "the file is damaged or truncated: re-export or re-copy it"


class MissingMPPError(SlideError):
    """The slide carries no usable pixel size (microns per pixel)."""

    default_hint = "pass the pixel size explicitly with --mpp (e.g. --mpp 0.25 for 40x, 0.5 for 20x)"


class SlideTooLargeError(SlideError):
    """The file claims an image larger than the pixel budget: decoding it could exhaust memory.

    Raised before anything is decoded, from what the file's own headers claim (a decompression bomb is a small
    file whose header claims a huge image).

    Parameters
    ----------
    path : str or os.PathLike
        The slide file.
    reason : str
        Which image of the file claims what size, and the budget it exceeds.
    claimed : int
        The pixels claimed.
    budget : int
        The budget exceeded, in pixels.
    """

    default_hint = ("if the file is genuine, raise the budget with --max-pixels (max_pixels= in Python); "
                    "otherwise it is damaged or hostile")

    def __init__(self, path: str | os.PathLike, reason: str, hint: str | None = None, *, claimed: int = 0,
                 budget: int = 0):
        self.claimed = int(claimed)
        self.budget = int(budget)
        super().__init__(path, reason, hint)


class StoreError(SlidestreamError):
    """A slide store (``<slide_id>.zarr``) is missing, damaged or does not match the request."""


class ConfigError(SlidestreamError, ValueError):
    """An argument, option or configuration value is invalid."""


class CheckpointError(SlidestreamError):
    """A model checkpoint or weight file cannot be loaded safely."""


class OutputExistsError(SlidestreamError):
    """Writing an output would replace a file slidestream did not write (or changed since), a folder, or one of
    the command's inputs; the message names the files and says how to proceed (``--overwrite``, another
    ``--out``)."""
