"""common/decode.py decoding: headers read without decoding, the pixel cap (training skips and reports such files),
the process-wide decode memory budget, and decodes identical to the earlier whole-image conversion."""
from __future__ import annotations

import argparse
import io
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from common import config, decode
from common.cache import load_or_build_cache
from common.cli import DataError
from common.data import prepare_data
from common.decode import (
    DecodeBudget,
    decode_bytes,
    decode_image,
    decode_many,
    read_image_header,
    to_bgr8,
    undecodable_reason,
)
from common.split import load_or_create_split
from conftest import make_dataset

PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel in the file, by colour type


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 0, row: bytes | None = None,
              chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A valid PNG whose rows all equal `row` (zeros by default), compressed row by row: a 20000 x 20000
    image takes a few kB here and hundreds of MB once decoded."""
    row_len = (width * PNG_CHANNELS[colour] * depth + 7) // 8
    line = b"\0" + (row if row is not None else bytes(row_len))  # filter byte 0, then the samples
    z = zlib.compressobj(6)
    idat = b"".join(z.compress(line) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(png_chunk(k, v) for k, v in chunks)
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """A real 20000 x 20000 1-bit PNG: about 60 kB, 400 MB once decoded (800 MB while OpenCV decodes it)."""
    return png_bytes(20000, 20000, depth=1)


def encode(img: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def gradient(h: int, w: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """Noisy content with a full range of values (and of alpha, for 4 channels)."""
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    img = rng.integers(0, top, (h, w, channels), endpoint=True).astype(dtype)
    if channels == 4:
        img[..., 3] = np.linspace(0, top, w).astype(dtype)[None]
    return img[..., 0] if channels == 1 else img


def with_exif_rotation(jpg: bytes, orientation: int = 6) -> bytes:
    """The JPEG with an EXIF APP1 segment whose orientation tag asks for a rotation."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + bytes(4)
    app1 = b"Exif\x00\x00" + tiff
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def as_array(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8)


PALETTE = bytes(range(256)) * 3
PNG_CASES = {  # name -> (colour type, bit depth, extra chunks before IDAT)
    "gray 1-bit": (0, 1, ()), "gray 8-bit": (0, 8, ()), "gray 16-bit": (0, 16, ()),
    "gray with tRNS": (0, 8, ((b"tRNS", b"\0\7"),)), "rgb 8-bit": (2, 8, ()), "rgb 16-bit": (2, 16, ()),
    "rgb with tRNS": (2, 8, ((b"tRNS", bytes(6)),)), "palette": (3, 8, ((b"PLTE", PALETTE),)),
    "palette 4-bit": (3, 4, ((b"PLTE", PALETTE[:48]),)),
    "palette with tRNS": (3, 8, ((b"PLTE", PALETTE), (b"tRNS", bytes(range(256))))),
    "gray+alpha 8-bit": (4, 8, ()), "gray+alpha 16-bit": (4, 16, ()), "rgba 8-bit": (6, 8, ()),
    "rgba 16-bit": (6, 16, ()),
}


@pytest.mark.parametrize("name", PNG_CASES)
def test_png_header_matches_what_opencv_decodes(name):
    colour, depth, chunks = PNG_CASES[name]
    png = png_bytes(37, 23, depth, colour, chunks=chunks)
    h = read_image_header(png)
    img = cv2.imdecode(as_array(png), cv2.IMREAD_UNCHANGED)
    assert (h.format, h.height, h.width) == ("PNG", *img.shape[:2]) == ("PNG", 23, 37)
    assert h.channels == (1 if img.ndim == 2 else img.shape[2]) and h.bytes_per_sample == img.dtype.itemsize
    assert h.decoded_bytes == img.nbytes


def jpeg_and_webp_cases() -> dict[str, tuple[bytes, int]]:
    """Name -> (file bytes, samples per pixel OpenCV decodes it into with IMREAD_UNCHANGED)."""
    bgr, bgra = gradient(23, 37, 3), gradient(23, 37, 4)
    cmyk = Image.fromarray(gradient(23, 37, 4)[..., :4].copy(), "CMYK")
    return {
        "jpeg": (encode(bgr, ".jpg"), 3), "jpeg gray": (encode(bgr[..., 0], ".jpg"), 1),
        "jpeg progressive": (encode(bgr, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)), 3),
        "jpeg cmyk": (pil_bytes(cmyk, "JPEG"), 3),
        "jpeg with exif": (pil_bytes(Image.fromarray(bgr), "JPEG", exif=Image.Exif()), 3),
        "webp lossy": (encode(bgr, ".webp"), 3),
        "webp lossless": (encode(bgr, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)), 3),
        "webp lossy alpha": (encode(bgra, ".webp"), 4),
        "webp lossless alpha": (encode(bgra, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)), 4),
        "webp extended": (pil_bytes(Image.fromarray(bgr), "WEBP", exif=b"Exif\0\0MM\0\x2a\0\0\0\x08\0\0"), 3),
    }


@pytest.mark.parametrize("name", list(jpeg_and_webp_cases()))
def test_jpeg_and_webp_headers_match_what_opencv_decodes(name):
    raw, channels = jpeg_and_webp_cases()[name]
    h = read_image_header(raw)
    unchanged = cv2.imdecode(as_array(raw), cv2.IMREAD_UNCHANGED)
    assert (h.height, h.width) == unchanged.shape[:2] == (23, 37)
    if name.startswith("webp"):
        assert h.format == "WebP" and h.channels == channels == unchanged.shape[2]
        if name == "webp extended":
            assert raw[12:16] == b"VP8X"
    else:
        # decode_bytes decodes JPEGs as colour: three 8-bit samples, whatever the file holds.
        assert h.format == "JPEG" and h.channels == 3 and h.bytes_per_sample == 1
        assert cv2.imdecode(as_array(raw), cv2.IMREAD_COLOR).nbytes == h.decoded_bytes


def test_exif_rotation_keeps_the_pixel_count():
    rotated = with_exif_rotation(encode(gradient(20, 50, 3), ".jpg"))
    h = read_image_header(rotated)
    assert (h.width, h.height) == (50, 20) and cv2.imdecode(as_array(rotated), cv2.IMREAD_COLOR).shape == (50, 20, 3)


def other_files() -> dict[str, tuple[bytes, str]]:
    """Files that are not decoded at all, and part of the reason given."""
    bgr = gradient(23, 37, 3)
    png, jpg = encode(bgr, ".png"), encode(bgr, ".jpg")
    return {
        "bmp": (encode(bgr, ".bmp"), "not a JPEG, PNG or WebP image"),
        "tiff": (encode(bgr, ".tiff"), "not a JPEG, PNG or WebP image"),
        "gif": (pil_bytes(Image.fromarray(bgr), "GIF"), "not a JPEG, PNG or WebP image"),
        "text": (b"hello, not an image\n", "not a JPEG, PNG or WebP image"),
        "empty": (b"", "not a JPEG, PNG or WebP image"),
        "png signature only": (png[:20], "PNG file is truncated or corrupt"),
        "png of zero width": (png_bytes(1, 1)[:16] + bytes(4) + png_bytes(1, 1)[20:], "PNG file is corrupt"),
        "jpeg header only": (jpg[:20], "JPEG file is truncated or corrupt"),
        "webp header only": (encode(bgr, ".webp")[:16], "WebP file is truncated or corrupt"),
    }


@pytest.fixture
def no_imdecode(monkeypatch):
    """Fail the test if OpenCV is asked to decode anything."""
    def refuse(*_):
        raise AssertionError("cv2.imdecode was called")
    monkeypatch.setattr(cv2, "imdecode", refuse)


@pytest.mark.parametrize("name", list(other_files()))
def test_other_formats_and_broken_headers_are_never_decoded(name, tmp_path, no_imdecode):
    raw, reason = other_files()[name]
    with pytest.raises(DataError, match=reason):
        read_image_header(raw)
    assert decode_bytes(as_array(raw), 16) is None
    path = tmp_path / "file.jpg"
    path.write_bytes(raw)
    assert decode_image(path, 16) is None and reason in undecodable_reason(path)


def test_oversized_image_is_refused_from_its_header(tmp_path, no_imdecode):
    bomb = bomb_png()
    assert len(bomb) < 200_000
    h = read_image_header(bomb)
    assert (h.width, h.height, h.channels, h.bytes_per_sample) == (20000, 20000, 1, 1)
    assert decode_bytes(as_array(bomb), 64) is None
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    assert decode_image(path, 64) is None
    assert undecodable_reason(path) == ("20000x20000 pixels (400 megapixels), more than --max-pixels 67108864; "
                                        "pass a larger --max-pixels to use it")
    assert "more than --max-pixels 100;" in undecodable_reason(path, max_pixels=100)


def peak_rss_mb() -> int:
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) // 1024


def test_oversized_image_costs_no_memory(tmp_path):
    """Refusing the 20000 x 20000 PNG (800 MB at its peak if decoded) leaves the peak RSS where it was."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak to the current RSS (Linux)
    except OSError as e:
        pytest.skip(f"the peak RSS cannot be reset here ({e})")
    before = peak_rss_mb()
    result = decode_image(path, 64)
    assert peak_rss_mb() - before < 50, f"the peak RSS grew by {peak_rss_mb() - before} MB"
    assert result is None


def test_a_raised_limit_decodes_it(tmp_path):
    small_bomb = png_bytes(3000, 2000, depth=1, row=bytes([0x0F]) * 375)  # stripes of 4 black, 4 white pixels
    assert decode_bytes(as_array(small_bomb), 16, max_pixels=5_999_999) is None
    rgb = decode_bytes(as_array(small_bomb), 16, max_pixels=6_000_000)
    assert rgb.shape == (16, 16, 3) and 100 < rgb.mean() < 155


def old_decode_bytes(raw: np.ndarray, size: int) -> np.ndarray | None:
    """decode_bytes as it was before headers were read: the whole image converted at once."""
    flags = cv2.IMREAD_UNCHANGED if raw[:4].tobytes() == b"\x89PNG" else cv2.IMREAD_COLOR
    img = cv2.imdecode(raw, flags)
    if img is None or img.shape[0] < 2 or img.shape[1] < 2:
        return None
    img = old_to_bgr8(img)
    interp = cv2.INTER_AREA if img.shape[0] * img.shape[1] > size * size else cv2.INTER_LINEAR
    return cv2.cvtColor(cv2.resize(img, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)


def old_to_bgr8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255
        return (img[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return img[..., :3]


def decode_cases() -> dict[str, bytes]:
    cases = {}
    for channels in (1, 3, 4):
        for dtype in (np.uint8, np.uint16):
            bits = np.dtype(dtype).itemsize * 8
            cases[f"png {channels} x {bits}-bit"] = encode(gradient(97, 53, channels, dtype), ".png")
    bgr = gradient(97, 53, 3)
    cases.update({"jpeg": encode(bgr, ".jpg"), "jpeg gray": encode(bgr[..., 0], ".jpg"),
                  "jpeg rotated": with_exif_rotation(encode(bgr, ".jpg")), "webp": encode(bgr, ".webp"),
                  "webp alpha": encode(gradient(97, 53, 4), ".webp"),
                  "palette with tRNS": png_bytes(53, 97, 8, 3, row=bytes(range(53)),
                                                 chunks=((b"PLTE", PALETTE), (b"tRNS", bytes(range(0, 256, 3)))))})
    return cases


@pytest.mark.parametrize("band_pixels", [1000, decode.BAND_PIXELS])
@pytest.mark.parametrize("name", list(decode_cases()))
def test_decodes_are_identical_to_before(name, band_pixels, monkeypatch):
    monkeypatch.setattr(decode, "BAND_PIXELS", band_pixels)  # 1000: many bands, the last one short
    raw = as_array(decode_cases()[name])
    for size in (24, 160):  # shrinking and enlarging
        new, old = decode_bytes(raw, size), old_decode_bytes(raw, size)
        assert new.dtype == np.uint8 and new.shape == (size, size, 3) and np.array_equal(new, old)


def test_conversion_of_a_16_bit_rgba_image_holds_little_memory():
    img = gradient(2000, 2000, 4, np.uint16)  # 32 MB; composited whole, its float temporaries take ~170 MB

    def peak(convert) -> tuple[np.ndarray, int]:
        tracemalloc.start()
        try:
            out = convert(img)
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    new, new_peak = peak(to_bgr8)
    old, old_peak = peak(old_to_bgr8)
    assert np.array_equal(new, old)
    assert new_peak < 80 * 2**20 and old_peak > 2 * new_peak, (new_peak, old_peak)


def test_budget_bounds_what_runs_at_once_and_serves_in_order():
    budget = DecodeBudget(100)
    inside, most, lock = [0], [0], threading.Lock()

    def work(n):
        with budget.reserve(n):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                assert budget.in_use <= budget.limit
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    for n, allowed in ((60, 1), (30, 3), (500, 1)):  # 500 is more than the budget: it runs alone
        most[0] = 0
        threads = [threading.Thread(target=work, args=(n,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert 1 <= most[0] <= allowed and budget.in_use == 0

    # First come, first served: a small request does not overtake a large one that is waiting.
    order, hold = [], threading.Event()

    def take(n, name):
        with budget.reserve(n):
            order.append(name)
            if name == "first":
                hold.wait(10)

    first = threading.Thread(target=take, args=(50, "first"))
    first.start()
    while not order:
        time.sleep(0.01)
    large = threading.Thread(target=take, args=(100, "large"))
    large.start()
    time.sleep(0.1)
    small = threading.Thread(target=take, args=(10, "small"))  # fits next to "first", but comes after "large"
    small.start()
    time.sleep(0.2)
    assert order == ["first"]
    hold.set()
    for t in (first, large, small):
        t.join(timeout=10)
    assert order == ["first", "large", "small"]


def test_an_interrupted_wait_does_not_block_those_behind():
    budget = DecodeBudget(100)
    real_wait = budget._cond.wait_for
    interrupts = [KeyboardInterrupt()]

    def wait_for(predicate):
        if interrupts:
            raise interrupts.pop()  # as Ctrl-C would, while waiting
        return real_wait(predicate)

    budget._cond.wait_for = wait_for
    with pytest.raises(KeyboardInterrupt):
        with budget.reserve(10):
            pass
    done = []

    def take():
        with budget.reserve(10):
            done.append(budget.in_use)

    later = threading.Thread(target=take, daemon=True)
    later.start()
    later.join(5)
    assert done == [10]


def test_decodes_of_many_files_stay_within_the_budget(tmp_path, monkeypatch):
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(gradient(200, 200, 3, seed=i), ".png"))
    one = read_image_header(paths[0].read_bytes()).decode_memory
    real, inside, most, lock = cv2.imdecode, [0], [0], threading.Lock()

    def counting_imdecode(*a):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for the other workers to start theirs
        try:
            return real(*a)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(cv2, "imdecode", counting_imdecode)
    expected = [decode_image(p, 32) for p in paths]
    for limit, allowed in ((one * 3 // 2, 1), (one * 100, 4)):
        monkeypatch.setattr(decode, "DECODE_BUDGET", DecodeBudget(limit))
        most[0] = 0
        got = list(decode_many(paths, 32, workers=4))
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))
        assert most[0] == allowed if allowed == 1 else most[0] > 1


@pytest.fixture
def bombed_dataset(tmp_path) -> Path:
    """The synthetic dataset plus, in one class, a 20000 x 20000 PNG and a 120 x 100 photo."""
    root = make_dataset(tmp_path / "raw-img")
    (root / "cane" / "huge.png").write_bytes(bomb_png())
    cv2.imwrite(str(root / "gatto" / "big.jpg"), gradient(100, 120, 3))
    return root


def test_training_skips_and_reports_oversized_images(bombed_dataset, tmp_path):
    logs = []
    split, pixels = load_or_create_split(bombed_dataset, tmp_path / "split.json", per_class=0, sizes=(0.6, 0.2, 0.2),
                                         img_size=32, log=logs.append)
    assert split.meta["skipped"] == ["cane/huge.png"] and "gatto/big.jpg" in [e["path"] for e in split.entries]
    huge = bombed_dataset / "cane" / "huge.png"
    assert (f"skipping image {huge}: 20000x20000 pixels (400 megapixels), more than --max-pixels 67108864; "
            "pass a larger --max-pixels to use it") in logs
    assert "skipped 1 unreadable or oversized image(s)" in logs and len(pixels) == len(split.entries)


def test_max_pixels_argument_reaches_the_split_and_the_cache(bombed_dataset, tmp_path):
    parser = argparse.ArgumentParser()
    config.add_data_args(parser)
    argv = ["--data-dir", str(bombed_dataset), "--output-dir", str(tmp_path / "runs"), "--per-class", "0",
            "--split", "0.6,0.2,0.2", "--img-size", "32", "--workers", "2"]
    assert parser.parse_args(argv).max_pixels == decode.DEFAULT_MAX_PIXELS
    logs = []
    split, images = prepare_data(config.DataConfig.from_args(parser.parse_args(argv + ["--max-pixels", "10000"])),
                                 log=logs.append)
    assert split.meta["skipped"] == ["cane/huge.png", "gatto/big.jpg"]  # 120 x 100 = 12000 pixels
    big = bombed_dataset / "gatto" / "big.jpg"
    assert (f"skipping image {big}: 120x100 pixels (0 megapixels), more than --max-pixels 10000; "
            "pass a larger --max-pixels to use it") in logs
    assert images.shape == (len(split.entries), 32, 32, 3)

    # Rebuilding the cache of a split under a lower limit names the file and the limit.
    with pytest.raises(DataError, match=r"can no longer be decoded: 48x48 pixels .* more than --max-pixels 2000;"):
        load_or_build_cache(bombed_dataset, split, tmp_path / "cache2", 32, max_pixels=2000, log=lambda *_: None)
