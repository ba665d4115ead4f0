"""app.py: predictions of a hand-built model with known answers, bad uploads, the JSON endpoints, the CLI, and
the page in a real headless Chromium."""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import http.client
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import app
from common import decode
from common.data import display_name
from common.decode import DecodeBudget, decode_image, read_image_header
from common.models import ScratchCNN
from common.runs import CKPT_FORMAT, save_checkpoint
from common.split import load_or_create_split
from common.transforms import eval_transform
from conftest import ANIMALS, ROOT, make_dataset
from test_decode import bomb_png, png_bytes

CHROMIUM = "/usr/bin/chromium"
INSTALL_CHROMIUM = "sudo apt-get install -y chromium"  # the command README.md gives
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
IMG, CROP = 72, 64
# BGR colours and the class the hand-built model must give them.
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)
KNOWN = [(RED, 0), (GREEN, 1), (BLUE, 2)]


def colour_model() -> ScratchCNN:
    """A scratch CNN that classifies by colour: red -> class 0, green -> 1, blue -> 2 (with mean 0, std 1).

    Every conv passes the R, G, B channels through its centre tap, BatchNorm is the identity, ReLU and
    max-pooling keep the non-negative values, so the pooled features are the image's colour; the head
    scores class k by channel k minus the other two.
    """
    model = ScratchCNN(len(ANIMALS))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                for c in range(3):
                    m.weight[c, c, 1, 1] = 1
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_parameters()
        head = model.classifier[-1]
        head.weight.zero_()
        head.bias.zero_()
        for k in range(3):
            head.weight[k, :3] = -12.0
            head.weight[k, k] = 12.0
    return model.eval()


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def solid(bgr, h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    """A noisy image of one colour, not square, so the resize and crop are exercised."""
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w, 3))
    return np.clip(np.array(bgr)[None, None] + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A runs folder: runs/best.pt (the colour model, with a real saved split), a copy in a run folder and a
    run whose checkpoint records no split."""
    root = tmp_path_factory.mktemp("app")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    split, _ = load_or_create_split(data, out / "split.json", per_class=20, sizes=(12, 4, 4), img_size=IMG,
                                    log=lambda *a: None)
    ckpt = {"format": CKPT_FORMAT, "arch": "scratch_cnn", "mode": "full", "classes": split.classes,
            "display_names": [display_name(c) for c in split.classes], "img_size": IMG, "crop_size": CROP,
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "model_state": colour_model().state_dict(),
            "best_val_acc": 1.0, "split_fingerprint": split.fingerprint,
            "config": {"data_dir": str(data), "output_dir": str(out), "split_file": None}}
    save_checkpoint(ckpt, out / "best.pt")
    save_checkpoint(ckpt, out / "20260101-000000-scratch_cnn-full" / "best.pt")
    foreign = {k: v for k, v in ckpt.items() if k not in ("config", "split_fingerprint")}
    save_checkpoint(foreign, out / "20250101-000000-nosplit" / "best.pt")
    return out


@pytest.fixture(scope="module")
def bundle(runs) -> app.ModelBundle:
    return app.load_bundle(runs / "best.pt", torch.device("cpu"))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_known_answers_and_pipeline_match(bundle, runs, tmp_path, ext):
    for bgr, k in KNOWN:
        data = encode(solid(bgr), ext)
        r = app.predict_image(bundle, data)
        assert "error" not in r, r
        probs = [c["prob"] for c in r["top5"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert r["top5"][0]["folder"] == ANIMALS[k] and r["top5"][0]["name"] == display_name(ANIMALS[k])
        assert 0.99 < sum(probs) <= 1 + 1e-6 and probs[0] > 0.99
        for key in ("image_png", "overlay_png"):
            png = base64.b64decode(r[key])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape == (CROP, CROP, 3)
        # The same file through the project's own decode and eval transform gives the same probabilities.
        path = tmp_path / f"img{k}{ext}"
        path.write_bytes(data)
        assert (app.decode_upload(data, IMG) == decode_image(path, IMG)).all()
        x = eval_transform(torch.from_numpy(decode_image(path, IMG)).permute(2, 0, 1)[None], CROP, [0.0] * 3, [1.0] * 3)
        with torch.no_grad():
            expected = bundle.model(x).softmax(1)[0].topk(5).values
        assert probs == pytest.approx(expected.tolist(), abs=1e-5)


def test_grayscale_rgba_and_16_bit_uploads_work(bundle):
    gray = cv2.cvtColor(solid(RED), cv2.COLOR_BGR2GRAY)
    rgba = np.dstack([solid(RED), np.full((90, 120), 255, np.uint8)])
    red16 = solid(RED).astype(np.uint16) * 257
    for data in (encode(gray), encode(gray, ".jpg"), encode(rgba), encode(red16)):
        r = app.predict_image(bundle, data)
        assert "error" not in r and len(r["top5"]) == 5, r
    assert app.predict_image(bundle, encode(rgba))["top5"][0]["name"] == "dog"
    assert app.predict_image(bundle, encode(red16))["top5"][0]["name"] == "dog"
    rgba[:, :60, 3] = 0  # transparent on the left: composited on white, as in training
    rgb = app.decode_upload(encode(rgba), IMG)
    assert (rgb[:, :30] == 255).all() and (rgb[:, -30:, 0] > 200).all() and (rgb[:, -30:, 1:] < 60).all()


BAD = ["empty", "text", "bmp", "webp", "truncated jpeg", "truncated png", "jpeg header only", "corrupt png", "1x1",
       "over 40 megapixels", "20000x20000 in 60 kB", "over 120 MB decoded", "over 20 MB"]
UNDECODED = ["text", "bmp", "webp", "jpeg header only", "1x1", "over 40 megapixels", "20000x20000 in 60 kB",
             "over 120 MB decoded"]  # refused from the header, before OpenCV is called


@functools.cache
def bad_uploads() -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, part of the expected message)."""
    jpg, png = encode(solid(GREEN), ".jpg"), encode(solid(GREEN))
    idat = png.index(b"IDAT")
    corrupt_png = png[:idat + 8] + bytes(b ^ 0x5A for b in png[idat + 8:idat + 40]) + png[idat + 40:]
    huge = np.zeros((6000, 7000), np.uint8)  # 42 megapixels, a few kB as PNG
    return {
        "empty": (b"", "the file is empty"),
        "text": (b"just some text, not an image\n" * 10, "not a JPEG or PNG image"),
        "bmp": (encode(solid(GREEN), ".bmp"), "not a JPEG or PNG image"),
        "webp": (encode(solid(GREEN), ".webp"), "not a JPEG or PNG image"),
        "truncated jpeg": (jpg[:len(jpg) // 2], "JPEG file is truncated"),
        "truncated png": (png[:len(png) // 2], "PNG file is truncated"),
        "jpeg header only": (jpg[:20], "JPEG file is truncated or corrupt"),
        "corrupt png": (corrupt_png, "corrupt and cannot be decoded"),
        "1x1": (encode(np.zeros((1, 1, 3), np.uint8)), "only 1x1 pixels"),
        "over 40 megapixels": (encode(huge), "7000x6000 (42 megapixels), more than the 40 allowed"),
        "20000x20000 in 60 kB": (bomb_png(), "20000x20000 (400 megapixels), more than the 40 allowed"),
        # 16 megapixels, but 8 bytes each: as much memory as 43 megapixels of 8-bit colour.
        "over 120 MB decoded": (png_bytes(4000, 4000, depth=16, colour=6),
                                "4000x4000 with 4 channel(s) of 16 bits, 128 MB once decoded, more than the 120 MB "
                                "allowed; upload a smaller or 8-bit image"),
        "over 20 MB": (jpg + bytes(21 * 2**20), "more than the 20 MB allowed"),
    }


@pytest.mark.parametrize("name", BAD)
def test_bad_uploads_give_clear_messages(bundle, name):
    data, message = bad_uploads()[name]
    assert message in app.predict_image(bundle, data)["error"]


@pytest.mark.parametrize("name", UNDECODED)
def test_bad_uploads_are_refused_before_decoding(bundle, name, monkeypatch):
    def refuse(*_):
        raise AssertionError("cv2.imdecode was called")
    monkeypatch.setattr(cv2, "imdecode", refuse)
    data, message = bad_uploads()[name]
    assert message in app.predict_image(bundle, data)["error"]


def test_uploads_decode_within_the_shared_budget(monkeypatch):
    reserved = []

    class Recording(DecodeBudget):
        def reserve(self, nbytes):
            reserved.append(nbytes)
            return super().reserve(nbytes)

    monkeypatch.setattr(decode, "DECODE_BUDGET", Recording(1 << 30))
    data = encode(solid(RED))
    app.decode_upload(data, IMG)
    assert reserved == [read_image_header(data).decode_memory]


@pytest.fixture(scope="module")
def server(runs):
    """The app's server on a free loopback port, in a thread."""
    checkpoints = app.Checkpoints(runs, runs / "best.pt", torch.device("cpu"))
    srv = app.AppServer(("127.0.0.1", 0), checkpoints)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, path: str, data: bytes | None = None) -> tuple[int, dict | str]:
    url = f"http://127.0.0.1:{srv.server_address[1]}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as r:
            body, status, kind = r.read(), r.status, r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        body, status, kind = e.read(), e.code, e.headers["Content-Type"]
    return status, json.loads(body) if kind == "application/json" else body.decode()


def test_endpoints(server, runs):
    status, page = call(server, "/")
    assert status == 200 and 'id="file"' in page and not re.search(r"https?:|//cdn", page)  # works offline
    status, r = call(server, "/checkpoints")
    names = [str(runs / "best.pt"), str(runs / "20260101-000000-scratch_cnn-full" / "best.pt"),
             str(runs / "20250101-000000-nosplit" / "best.pt")]
    assert status == 200 and r == {"checkpoints": names, "default": names[0]}

    status, r = call(server, "/predict", encode(solid(BLUE)))
    assert status == 200 and r["top5"][0]["name"] == "elephant" and r["model"]["checkpoint"] == names[0]
    status, r = call(server, f"/predict?ckpt={urllib.parse.quote(names[1])}", encode(solid(GREEN)))
    assert status == 200 and r["top5"][0]["name"] == "horse" and r["model"]["checkpoint"] == names[1]
    status, r = call(server, "/predict", b"GIF89a not really")
    assert status == 400 and "not a JPEG or PNG" in r["error"]
    status, r = call(server, "/predict?ckpt=/etc/passwd", encode(solid(GREEN)))
    assert status == 400 and "no checkpoint named '/etc/passwd'" in r["error"]

    status, r = call(server, "/test-images")
    assert status == 200 and len(r["images"]) == 40 and "saved test split" in r["note"]
    first = r["images"][0]
    status, p = call(server, "/test-image/0")
    assert status == 200 and p["name"] == first["name"] and p["true_label"] == first["label"] == "dog"
    assert call(server, "/test-image/40")[0] == 404 and call(server, "/test-image/x")[0] == 404
    status, r = call(server, f"/test-images?ckpt={urllib.parse.quote(names[2])}")
    assert status == 200 and r["images"] == [] and "records no saved split" in r["note"]
    assert call(server, "/nothing")[0] == 404

    # Each checkpoint was loaded once and is reused.
    loaded = server.checkpoints.get(names[0])
    call(server, "/predict", encode(solid(RED)))
    assert server.checkpoints.get(names[0]) is loaded and len(server.checkpoints._models) == 3


def test_the_page_is_served_from_its_own_file(server):
    html = (ROOT / "static" / "app.html").read_text(encoding="utf-8")
    status, page = call(server, "/")
    assert status == 200 and page == html.replace(app.MAX_BYTES_SLOT, str(app.MAX_UPLOAD_BYTES))
    assert f"const MAX_BYTES = {20 * 2**20};" in page and "__" not in page.split("<script>")[1]


def test_the_page_is_found_from_any_working_folder(tmp_path):
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import app; print(app.PAGE.splitlines()[0])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "<!doctype html>\n", proc.stderr[-2000:]


def test_a_page_file_without_its_upload_limit_slot_is_refused(tmp_path):
    (tmp_path / "app.html").write_text("<!doctype html><script>const MAX_BYTES = 1;</script>")
    with pytest.raises(RuntimeError, match="__MAX_UPLOAD_BYTES__ exactly once"):
        app.load_page(tmp_path / "app.html")


@pytest.mark.parametrize("length, status, message", [(str(50 * 2**20), 413, "more than the 20 MB allowed"),
                                                      ("-1", 411, "no valid Content-Length")])
def test_bad_request_sizes_are_refused_unread(server, length, status, message):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", length)  # announced, never sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == status and message in json.loads(response.read())["error"]
    conn.close()


def test_oversized_upload_over_http_is_answered_and_the_server_goes_on(server):
    status, r = call(server, "/predict", bomb_png())
    assert status == 400 and "20000x20000 (400 megapixels), more than the 40 allowed" in r["error"]
    status, r = call(server, "/predict", encode(solid(RED)))
    assert status == 200 and r["top5"][0]["name"] == "dog"


def raw_request(srv, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send a request exactly as written (head: request line and headers), return (status, body text)."""
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read().decode()


ALLOWED_HOSTS = ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LocalHost", "[::1]:{port}", "[::1]",
                 "127.8.9.10:80"]
FORGED_HOSTS = ["evil.example:{port}", "evil.example", "localhost.evil.example", "127.0.0.1.evil.example",
                "10.0.0.1:{port}", "[::2]:{port}", "0.0.0.0:{port}", "127.0.0.1:http", "127.0.0.1:{port}:1", ""]


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_loopback_host_headers_are_answered(server, host):
    host = host.format(port=server.server_address[1])
    status, text = raw_request(server, f"GET /checkpoints HTTP/1.1\nHost: {host}\n")
    assert status == 200 and "best.pt" in text


@pytest.mark.parametrize("host", FORGED_HOSTS)
def test_other_host_headers_are_refused(server, host):
    """A page whose DNS name was rebound to 127.0.0.1 sends its own name: it must learn nothing."""
    host = host.format(port=server.server_address[1])
    png = encode(solid(RED))
    for head, body in ((f"GET /checkpoints HTTP/1.1\nHost: {host}\n", b""),
                       (f"GET /test-images HTTP/1.1\nHost: {host}\n", b""), (f"GET / HTTP/1.1\nHost: {host}\n", b""),
                       (f"POST /predict HTTP/1.1\nHost: {host}\nContent-Length: {len(png)}\n", png)):
        status, text = raw_request(server, head, body)
        assert status == 403 and "answers only requests addressed to localhost, 127.0.0.1, [::1]" in text
        assert "best.pt" not in text and "img" not in text and "top5" not in text


def test_missing_or_repeated_host_headers(server):
    assert raw_request(server, "GET /checkpoints HTTP/1.1\n")[0] == 403  # HTTP/1.1 requires Host
    assert raw_request(server, "GET /checkpoints HTTP/1.1\nHost: localhost\nHost: evil.example\n")[0] == 403
    status, text = raw_request(server, "GET /checkpoints HTTP/1.0\n")  # HTTP/1.0 may omit it
    assert status == 200 and "best.pt" in text


@pytest.mark.parametrize("host, own, allowed", [
    ("demo.lan:7860", "demo.lan", True), ("DEMO.lan", "demo.lan", True), ("demo.lan", "other.lan", False),
    ("[fe80::1]:7860", "fe80::1", True), ("192.168.1.5:7860", "192.168.1.5", True),
    ("192.168.1.6", "192.168.1.5", False),
    ("evil.example", "", False), (":7860", "", False), ("[]:7860", "", False), ("localhost:", "127.0.0.1", False)])
def test_the_servers_own_host_is_allowed(host, own, allowed):
    assert app.host_allowed(host, own) is allowed


@contextlib.contextmanager
def serving(runs, **options):
    """An AppServer with the given options on a free loopback port, in a thread."""
    srv = app.AppServer(("127.0.0.1", 0), app.Checkpoints(runs, runs / "best.pt", torch.device("cpu")), **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def stalled(srv, n: int) -> list[socket.socket]:
    """n clients that announce a 1,000-byte upload, send 3 bytes of it, and stop."""
    socks = [socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=60) for _ in range(n)]
    for sock in socks:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nabc")
    return socks


def upload(srv, data: bytes) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers) of one upload on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=60)
    try:
        conn.request("POST", "/predict", body=data)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.parametrize("n_stalled", [8, 64])
def test_stalled_clients_block_no_upload(runs, capfd, n_stalled):
    """8 or 64 stalled uploads hold no model slot: 300 uploads from 32 clients all succeed meanwhile."""
    data = encode(solid(RED))
    with serving(runs, read_seconds=3) as srv:
        socks = stalled(srv, n_stalled)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: upload(srv, data), range(300)))
        assert [status for status, _, _ in answers] == [200] * 300
        assert all(r["top5"][0]["name"] == "dog" for _, r, _ in answers)
        timed_out = http.client.HTTPResponse(socks[0])  # the deadline ends a stalled upload with a 408
        timed_out.begin()
        assert timed_out.status == 408 and "did not arrive within 3 s" in json.loads(timed_out.read())["error"]
        for sock in socks:
            sock.close()
    assert "Traceback" not in capfd.readouterr().err


def test_clients_that_leave_are_one_log_line_each(runs, capfd):
    data = encode(solid(RED))
    with serving(runs) as srv:
        for sock in stalled(srv, 3):
            sock.close()  # gone after 3 of 1,000 bytes
        for _ in range(10):  # gone before the answer: reset at once (SO_LINGER 0), so writing it fails
            sock = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=60)
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n"
                         .encode() + data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        assert upload(srv, data)[0] == 200  # and the server goes on
    err = capfd.readouterr().err
    assert err.count("dropped client: it closed the connection after 3 of 1000 bytes") == 3
    assert "Traceback" not in err
    assert all("dropped client: it" in line for line in err.splitlines() if "Error" in line), err


def test_a_saturated_server_answers_503_with_retry_after(runs, monkeypatch):
    """Every connection taken: 503 at once. Every model slot taken past the wait: 503 too. Never a reset."""
    data = encode(solid(RED))
    with serving(runs, max_connections=2, read_seconds=30) as srv:
        socks = stalled(srv, 2)
        time.sleep(0.2)  # both accepted and being read
        status, answer, headers = upload(srv, data)
        assert status == 503 and headers["Retry-After"] == "1" and "too many connections" in answer["error"]
        for sock in socks:
            sock.close()
    slow = threading.Event()
    real = app.predict_image
    monkeypatch.setattr(app, "predict_image", lambda bundle, image: slow.wait(30) and real(bundle, image))
    with serving(runs, max_handlers=1, slot_wait=0.5) as srv:
        first = concurrent.futures.ThreadPoolExecutor(1).submit(upload, srv, data)
        time.sleep(0.3)  # the first holds the only model slot
        status, answer, headers = upload(srv, data)
        assert status == 503 and headers["Retry-After"] == "1" and "model slot" in answer["error"]
        slow.set()
        assert first.result(timeout=60)[0] == 200


def test_a_request_waits_for_a_model_slot_within_the_wait(runs, monkeypatch):
    data = encode(solid(RED))
    release = threading.Event()
    real = app.predict_image
    monkeypatch.setattr(app, "predict_image", lambda bundle, image: release.wait(30) and real(bundle, image))
    with serving(runs, max_handlers=1, slot_wait=30) as srv:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        first, second = pool.submit(upload, srv, data), pool.submit(upload, srv, data)
        time.sleep(1.0)
        assert not first.done() and not second.done()  # one runs, one waits for its slot
        release.set()
        assert first.result(timeout=60)[0] == second.result(timeout=60)[0] == 200


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=120)


def test_start_up_errors(runs, tmp_path):
    proc = run_app("--ckpt", str(tmp_path / "missing.pt"), "--runs-dir", str(runs))
    assert proc.returncode == 1 and proc.stderr.startswith("error: checkpoint") and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_app("--ckpt", str(runs / "best.pt"), "--runs-dir", str(runs), "--port", str(taken.getsockname()[1]))
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1 and "--port" in proc.stderr


@pytest.fixture
def browser():
    """Debian's Chromium driven by Playwright, or a skip saying what is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no {CHROMIUM}: run `{INSTALL_CHROMIUM}` to run the browser test")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    try:
        pw = playwright_api.sync_playwright().start()
    except Exception as e:
        pytest.skip(f"Playwright's driver cannot run here: {type(e).__name__}: {e}")
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
    except Exception as e:
        pw.stop()
        pytest.skip(f"Chromium cannot start here: {str(e).splitlines()[0]}")
    yield b
    b.close()
    pw.stop()


def test_page_in_chromium(runs, browser):
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--ckpt", str(runs / "best.pt"), "--runs-dir",
                             str(runs), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, f"the app did not start: {line + proc.stdout.read() if proc.poll() is not None else line!r}"
        # Drain the request log so a full pipe never blocks the server.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        page = browser.new_page()
        # expect() polls through locators; wait_for_function would need eval, which the page's CSP forbids.
        from playwright.sync_api import expect
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)
        page.goto(match.group(0))
        expect(page.locator("#ckpt option")).to_have_count(3)

        red = {"name": "red.png", "mimeType": "image/png", "buffer": encode(solid(RED))}
        page.set_input_files("#file", files=[red])
        expect(page.locator("#top1")).to_have_text(re.compile(r"^dog \(\d+\.\d%\)$"))
        expect(page.locator("#top5 tr")).to_have_count(5)
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#heatmap-caption")).to_have_text("Grad-CAM for dog")
        expect(page.locator("#heatmap-img")).to_have_attribute("src", re.compile("^data:image/png;base64,"))
        assert page.locator("#heatmap-img").evaluate("img => img.naturalWidth") == CROP

        # Another checkpoint re-runs the shown image with that model.
        other = str(runs / "20260101-000000-scratch_cnn-full" / "best.pt")
        page.select_option("#ckpt", other)
        expect(page.locator("#meta")).to_have_text(re.compile("^" + re.escape(other + ":")))
        expect(page.locator("#top1")).to_have_text(re.compile("^dog"))

        expect(page.locator("#test")).to_be_enabled()
        page.select_option("#test", "0")
        expect(page.locator("#top1")).to_contain_text("true label: dog")

        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
        expect(page.locator("#error")).to_contain_text("not a JPEG or PNG image")
        expect(page.locator("#result")).to_be_hidden()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_listed_checkpoint_whose_weights_do_not_fit_is_a_clear_400(runs, tmp_path):
    folder = tmp_path / "runs"
    good = torch.load(runs / "best.pt", map_location="cpu", weights_only=True)
    save_checkpoint(good, folder / "best.pt")
    edited = {**good, "model_state": {**good["model_state"], "classifier.2.weight": torch.zeros(3, 7)}}
    save_checkpoint(edited, folder / "20260202-000000-edited" / "best.pt")
    srv = app.AppServer(("127.0.0.1", 0), app.Checkpoints(folder, folder / "best.pt", torch.device("cpu")))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        name = urllib.parse.quote(str(folder / "20260202-000000-edited" / "best.pt"))
        status, r = call(srv, f"/predict?ckpt={name}", encode(solid(RED)))
        assert status == 400 and "do not fit" in r["error"], r
        assert call(srv, "/predict", encode(solid(RED)))[1]["top5"][0]["name"] == "dog"
    finally:
        srv.shutdown()
        srv.server_close()
