"""Image decoding within a memory budget: headers read before decoding, any OpenCV decode as 8-bit RGB."""
from __future__ import annotations

import struct
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from common.cli import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DECODE_VERSION = 2  # part of cache keys: bump when decode_image's output changes

# A small file can hold a huge image (a 1.2 MB PNG of 20000 x 20000 pixels decodes to 1.6 GB), so what a
# decode will cost is read from the file's header before OpenCV allocates anything.
DEFAULT_MAX_PIXELS = 8192 * 8192  # width x height (67 megapixels); Animals-10's photos have at most 0.4
DECODE_MEMORY = 1 << 30  # bytes that the decodes of this process may hold at once
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
BAND_PIXELS = 1 << 20  # to_bgr8 converts images this many pixels at a time


@dataclass(frozen=True)
class ImageHeader:
    """What a PNG, JPEG or WebP header says about the pixels, read without decoding them."""
    format: str  # "PNG", "JPEG" or "WebP"
    width: int
    height: int
    channels: int  # samples per pixel of the array OpenCV decodes it into (as decode_bytes calls it)
    bytes_per_sample: int
    data_start: int  # offset of the first byte after the headers (JPEG: the start-of-scan marker)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Size of the array OpenCV decodes the image into."""
        return self.pixels * self.channels * self.bytes_per_sample

    @property
    def decode_memory(self) -> int:
        """Bytes that decode_bytes holds at once for this image, at most."""
        # OpenCV holds the decoded array twice while it hands it over (measured with OpenCV 5), then to_bgr8
        # makes an 8-bit BGR copy; the sum bounds both.
        return 2 * self.decoded_bytes + 3 * self.pixels


def _png_header(buf: memoryview) -> ImageHeader:
    if len(buf) < 33 or buf[12:16] != b"IHDR":
        raise DataError("the PNG file is truncated or corrupt (no image header)")
    width, height, depth, colour = struct.unpack_from(">IIBB", buf, 16)
    if colour not in (0, 2, 3, 4, 6) or not width or not height:
        raise DataError("the PNG file is corrupt (its image header is invalid)")
    channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}[colour]
    if colour in (2, 3) and _png_has_transparency(buf):
        channels = 4  # OpenCV decodes colour with a tRNS chunk as BGRA
    return ImageHeader("PNG", width, height, channels, 2 if depth == 16 else 1, 8)


def _png_has_transparency(buf: memoryview) -> bool:
    """Whether a tRNS chunk comes before the image data; True when the chunks cannot be followed."""
    pos = 8
    while pos + 8 <= len(buf):
        length, kind = struct.unpack_from(">I4s", buf, pos)
        if kind in (b"tRNS", b"IDAT"):
            return kind == b"tRNS"
        pos += 12 + length
    return True


def _jpeg_header(buf: memoryview) -> ImageHeader:
    pos, frame = 2, None
    while pos + 4 <= len(buf) and buf[pos] == 0xFF:
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA and frame:  # start of scan: the compressed pixels follow
            precision, height, width = frame
            if not width or not height:
                break
            return ImageHeader("JPEG", width, height, 3, 2 if precision > 8 else 1, pos)
        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
        # SOF0..SOF15 (but DHT, JPG and DAC, which share the range) hold precision, height and width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= len(buf):
            frame = struct.unpack_from(">BHH", buf, pos + 4)
        pos += 2 + length
    raise DataError("the JPEG file is truncated or corrupt (no frame or scan header)")


def _webp_header(buf: memoryview) -> ImageHeader:
    chunk, alpha, size = bytes(buf[12:16]), False, None
    if chunk == b"VP8X" and len(buf) >= 30:  # extended: the canvas size, and whether there is alpha
        alpha = bool(buf[20] & 0x10)
        size = 1 + int.from_bytes(buf[24:27], "little"), 1 + int.from_bytes(buf[27:30], "little")
    elif chunk == b"VP8 " and len(buf) >= 30 and buf[23:26] == b"\x9d\x01\x2a":  # lossy
        w, h = struct.unpack_from("<HH", buf, 26)
        size = w & 0x3FFF, h & 0x3FFF
    elif chunk == b"VP8L" and len(buf) >= 25 and buf[20] == 0x2F:  # lossless
        bits = int.from_bytes(buf[21:25], "little")
        alpha, size = bool(bits >> 28 & 1), (1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF))
    if not size or not all(size):
        raise DataError("the WebP file is truncated or corrupt (no image header)")
    # OpenCV decodes WebP with alpha into BGRA first, then converts.
    return ImageHeader("WebP", size[0], size[1], 4 if alpha else 3, 1, 12)


def read_image_header(data: bytes | np.ndarray) -> ImageHeader:
    """Format, size, channels and sample size of a PNG, JPEG or WebP file's bytes; DataError for anything else."""
    buf = memoryview(data).cast("B")
    if buf[:8] == PNG_SIGNATURE:
        return _png_header(buf)
    if buf[:2] == JPEG_SIGNATURE:
        return _jpeg_header(buf)
    if buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
        return _webp_header(buf)
    # Other formats are not decoded at all: without a header reader their cost is unknown.
    raise DataError("this file is not a JPEG, PNG or WebP image")


class DecodeBudget:
    """Bounds the memory of the decodes running at once: each holds its estimated bytes until it is done.

    Waiters are served in arrival order, so a large decode is not starved by small ones; one larger than the
    whole budget runs alone.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Wait until nbytes fit in the budget, hold them for the with block."""
        nbytes, me = min(max(nbytes, 0), self.limit), object()
        with self._cond:
            self._waiting.append(me)
            try:
                self._cond.wait_for(lambda: self._waiting[0] is me and self.in_use + nbytes <= self.limit)
            finally:  # also when interrupted, so that those behind are not stuck
                self._waiting.remove(me)
                self._cond.notify_all()
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


# One budget for the whole process: memory is shared by every thread (training's decoding pool, app.py's
# request handlers), so a per-call limit would not bound it.
DECODE_BUDGET = DecodeBudget(DECODE_MEMORY)


def _bgr8_band(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255
        return (img[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return img[..., :3]


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV decode (grayscale, BGR, BGRA; 8 or 16 bit) as 8-bit BGR; transparency is composited on white."""
    if img.dtype not in (np.uint8, np.uint16):
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        return _bgr8_band(img)  # a view, or one 3-byte-a-pixel copy
    # Band by band: converting 16 bits and compositing alpha make float temporaries of ~40 bytes a pixel,
    # which for a whole 40-megapixel image would be 1.6 GB at once.
    out = np.empty((*img.shape[:2], 3), np.uint8)
    rows = max(1, BAND_PIXELS // img.shape[1])
    for r in range(0, img.shape[0], rows):
        out[r:r + rows] = _bgr8_band(img[r:r + rows])
    return out


def decode_bytes(data: np.ndarray, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """Decode encoded image bytes (uint8 array) to RGB uint8 resized to size x size; None when undecodable.

    A file whose header cannot be read or announces more than max_pixels pixels is not decoded at all
    (undecodable_reason says why); the others decode within DECODE_BUDGET.
    """
    try:
        header = read_image_header(data)
    except DataError:
        return None
    if header.pixels > max_pixels:
        return None
    # PNGs keep their alpha (and 16 bits) to be converted by to_bgr8; JPEGs decode as colour, which applies
    # EXIF rotation and converts grayscale and CMYK.
    flags = cv2.IMREAD_UNCHANGED if header.format == "PNG" else cv2.IMREAD_COLOR
    with DECODE_BUDGET.reserve(header.decode_memory):
        try:
            img = cv2.imdecode(data, flags)
        except cv2.error:
            img = None
        if img is None or img.shape[0] < 2 or img.shape[1] < 2:
            return None
        img = to_bgr8(img)
        interp = cv2.INTER_AREA if img.shape[0] * img.shape[1] > size * size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_image(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """Decode an image file to RGB uint8 resized to size x size; None when it cannot be decoded."""
    return decode_bytes(np.fromfile(path, dtype=np.uint8), size, max_pixels)  # np.fromfile copes with non-ASCII paths


def undecodable_reason(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Why decode_image gives None for a file, for the log."""
    try:
        header = read_image_header(np.fromfile(path, dtype=np.uint8))
    except (DataError, OSError) as e:
        return f"unreadable ({e})"
    if header.pixels > max_pixels:
        return (f"{header.width}x{header.height} pixels ({header.pixels / 1e6:.0f} megapixels), more than "
                f"--max-pixels {max_pixels}; pass a larger --max-pixels to use it")
    if min(header.width, header.height) < 2:
        return f"only {header.width}x{header.height} pixels"
    return f"unreadable (the {header.format} file is corrupt or truncated)"


def decode_many(paths: Sequence[Path], size: int, workers: int = 2,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray | None]:
    """decode_image over many files, in order, on a thread pool."""
    # cv2 releases the GIL while decoding and resizing, so threads scale across cores.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        yield from pool.map(lambda p: decode_image(p, size, max_pixels), paths)
