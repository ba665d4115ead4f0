"""Local web demo: upload an image (or pick a test-split image), see the top-5 classes and the Grad-CAM overlay.

Examples:
    python app.py --ckpt runs/best.pt                          # http://127.0.0.1:7860
    python app.py --ckpt runs/<run>/best.pt --port 8000 --runs-dir runs
    python app.py --ckpt runs/best.pt --source-dir ../shared/data/animals10/raw-img   # where the split's images are

The page offers every runs/*/best.pt and runs/best.pt; each checkpoint is loaded once, on first use, and
kept. Inference runs on the GPU when there is one. Uploads are limited to JPEG and PNG files of at most
20 MB, 40 megapixels and 120 MB once decoded (both read from the header, before decoding); grayscale,
16-bit and transparent images are converted as in training (transparency on white). The test-image picker
reads the checkpoint's saved split like evaluate.py; when the data is not there the page says why and offers
uploads only. The first use of a split whose pixel cache
is missing decodes it into runs/cache/ once, as evaluate.py would.

Why no Gradio: the page needs one upload, two selects and a table, which a single self-contained HTML
page with a little inline JavaScript (static/app.html) does; Python's http.server serves it and four JSON
endpoints with no new dependency (Gradio brings FastAPI, uvicorn, pandas and a front-end bundle), starts at once, works
offline, and its prediction function and endpoints are tested directly. The server is meant for
loopback use (one user, a few requests at a time), which is what ThreadingHTTPServer is for. Each request is
read whole within 10 s before it may use a model (8 at a time), so stalled or slow clients block nobody; when
it is saturated it answers 503 with Retry-After rather than dropping connections; and it answers only requests
addressed to a loopback name or to its --host (403 otherwise), so a web page whose DNS name is rebound to
127.0.0.1 cannot read it.

Endpoints: GET / (the page), GET /checkpoints, GET /test-images?ckpt=NAME, GET /test-image/<k>?ckpt=NAME
(prediction for the k-th test image), POST /predict?ckpt=NAME with the image file as the request body.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import torch
from torch import nn

from common.cli import ArgumentParser, DataError, UserError, run_main
from common.compression import require_float
from common.data import display_name
from common.decode import JPEG_SIGNATURE, PNG_SIGNATURE, ImageHeader, decode_bytes, read_image_header
from common.engine import resolve_device
from common.explain import DEFAULT_LAYER, GradCAM, find_layer, overlay
from common.inference import LabelledImages, Predictor, center_crop, load_test_split
from common.runs import CheckpointError, load_checkpoint

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 20 MB PNG can hold far more; decoding it would take gigabytes of memory
# A 40-megapixel 8-bit colour photo; a 16-bit RGBA PNG takes 8 bytes a pixel, so fewer of its pixels fit.
MAX_DECODED_BYTES = 3 * MAX_PIXELS
MAX_HANDLERS = 8  # requests using a model at once; each can hold a 20 MB upload and its decode
MAX_CONNECTIONS = 256  # connections being read or answered at once; beyond them a client gets 503 at once
LISTEN_BACKLOG = 1024  # connections the kernel queues before they are accepted: above any client count
READ_SECONDS = 10.0  # a request's line, headers and body must all arrive within this, before it takes a model slot
SLOT_WAIT_SECONDS = 30.0  # a request read whole waits this long for a model slot, then is answered 503
BODY_BUDGET = MAX_HANDLERS * MAX_UPLOAD_BYTES  # upload bytes held at once; beyond it a client gets 503
RETRY_AFTER_SECONDS = 1
MIN_SIDE = 32  # smaller images hold nothing recognisable once scaled up to the model's input size
TOP_K = 5
PAGE_FILE = Path(__file__).resolve().parent / "static" / "app.html"  # beside app.py, whatever the working folder
MAX_BYTES_SLOT = "__MAX_UPLOAD_BYTES__"  # where the page's script takes MAX_UPLOAD_BYTES


class UploadError(Exception):
    """An uploaded file that cannot be classified; the message says why and what to upload instead."""


@dataclass
class ModelBundle:
    """A loaded checkpoint: its Predictor (eval-mode model on the device, transform, metadata) and Grad-CAM layer."""
    name: str
    predictor: Predictor
    layer: nn.Module
    # Grad-CAM hooks the model's layer, so two requests must not run the same model at once.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ckpt(self) -> dict:
        return self.predictor.ckpt  # the metadata: the weights and training state are dropped

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    @property
    def device(self) -> torch.device:
        return self.predictor.device


def load_bundle(path: Path, device: torch.device, name: str | None = None) -> ModelBundle:
    """Load a checkpoint and rebuild its model on device; CheckpointError when it cannot be used."""
    ckpt = load_checkpoint(path)
    require_float(ckpt, "the page's Grad-CAM overlay")
    try:
        predictor = Predictor(ckpt, device)
        layer = find_layer(predictor.model, DEFAULT_LAYER[ckpt["arch"]])
    except (KeyError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be rebuilt into a model ({first}); retrain or pick another run") from None
    return ModelBundle(name or str(path), predictor, layer)


def upload_header(data: bytes) -> ImageHeader:
    """The JPEG or PNG header of an upload, read without decoding, or UploadError."""
    if not data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        raise UploadError("this file is not a JPEG or PNG image; upload a .jpg or .png photo")
    try:
        return read_image_header(data)
    except DataError as e:
        raise UploadError(str(e)) from None


def decode_upload(data: bytes, size: int) -> np.ndarray:
    """Uploaded bytes to RGB uint8 size x size, decoded as training decodes files, or UploadError."""
    if not data:
        raise UploadError("the file is empty; upload a .jpg or .png photo")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB, more than the {MAX_UPLOAD_BYTES // 2**20} MB "
                          "allowed; upload a smaller image")
    header = upload_header(data)
    fmt, width, height = header.format, header.width, header.height
    if width * height > MAX_PIXELS:
        raise UploadError(f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the "
                          f"{MAX_PIXELS // 1_000_000} allowed; upload a smaller image")
    if header.decoded_bytes > MAX_DECODED_BYTES:
        raise UploadError(f"the image is {width}x{height} with {header.channels} channel(s) of "
                          f"{8 * header.bytes_per_sample} bits, {header.decoded_bytes / 1e6:.0f} MB once decoded, more "
                          f"than the {MAX_DECODED_BYTES // 1_000_000} MB allowed; upload a smaller or 8-bit image")
    if min(width, height) < MIN_SIDE:
        raise UploadError(f"the image is only {width}x{height} pixels; upload one at least {MIN_SIDE}x{MIN_SIDE}")
    # OpenCV decodes a JPEG cut short without complaint (grey below the cut), so check that it ends.
    if (fmt == "JPEG" and data.find(b"\xff\xd9", header.data_start) < 0) or (fmt == "PNG" and b"IEND" not in data):
        raise UploadError(f"the {fmt} file is truncated (it stops before its end); upload the complete file")
    img = decode_bytes(np.frombuffer(data, np.uint8), size, MAX_PIXELS)  # within common.decode's decode budget
    if img is None:
        raise UploadError(f"the {fmt} file is corrupt and cannot be decoded; upload another image")
    return img


def png_base64(rgb: np.ndarray) -> str:
    """An RGB uint8 image as base64 PNG text."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def predict_array(bundle: ModelBundle, rgb: np.ndarray) -> dict:
    """Top-5 classes, the centre crop the model saw and its Grad-CAM overlay, for an img_size RGB uint8 image."""
    ckpt = bundle.ckpt
    start = time.perf_counter()
    x = bundle.predictor.prepare(rgb[None])
    with bundle.lock, GradCAM(bundle.model, bundle.layer) as cam:
        heat, logits = cam(x)  # the heatmap explains the top-1 class
    probs = logits.float().softmax(1)[0].cpu()
    top = probs.topk(min(TOP_K, len(probs)))
    seen = center_crop(rgb, ckpt["crop_size"])
    return {
        "top5": [{"name": display_name(ckpt["classes"][i]), "folder": ckpt["classes"][i], "prob": float(p)}
                 for p, i in zip(top.values.tolist(), top.indices.tolist())],
        "image_png": png_base64(seen),
        "overlay_png": png_base64(overlay(seen, heat[0].cpu().numpy())),
        "model": {"checkpoint": bundle.name, "arch": ckpt["arch"], "mode": ckpt["mode"],
                  "best_val_acc": ckpt.get("best_val_acc"), "device": str(bundle.device)},
        "seconds": time.perf_counter() - start,
    }


def predict_image(bundle: ModelBundle, image_bytes: bytes) -> dict:
    """predict_array on uploaded file bytes; {"error": message} instead when the upload cannot be used."""
    try:
        rgb = decode_upload(image_bytes, bundle.ckpt["img_size"])
    except UploadError as e:
        return {"error": str(e)}
    return predict_array(bundle, rgb)


class Checkpoints:
    """The checkpoints on offer (rescanned on each listing) and the models and test splits loaded so far."""

    def __init__(self, runs_dir: Path, default: Path, device: torch.device, source_dir: str | None = None,
                 split_file: str | None = None):
        self.runs_dir, self.device = runs_dir, device
        self.source_dir, self.split_file = source_dir, split_file
        self.default_path = default
        self.default = next((n for n, p in self.available().items() if p.resolve() == default.resolve()), str(default))
        self._models: dict[str, ModelBundle] = {}
        self._tests: dict[tuple, LabelledImages] = {}
        self._load_lock = threading.Lock()  # one loader at a time: two first requests must not load twice
        self._test_lock = threading.Lock()

    def available(self) -> dict[str, Path]:
        """Name -> path: runs/best.pt, then runs/*/best.pt newest first, and the --ckpt file wherever it is."""
        found = [self.runs_dir / "best.pt"] + sorted(self.runs_dir.glob("*/best.pt"), reverse=True)
        names = {str(p): p for p in found if p.is_file()}
        if not any(p.resolve() == self.default_path.resolve() for p in names.values()):
            names[str(self.default_path)] = self.default_path
        return names

    def get(self, name: str) -> ModelBundle:
        """The loaded model of a listed checkpoint, loading it on first use; CheckpointError for other names."""
        with self._load_lock:
            if name not in self._models:
                path = self.available().get(name)
                if path is None:
                    raise CheckpointError(f"no checkpoint named {name!r}; pick one from the list")
                self._models[name] = load_bundle(path, self.device, name)
            return self._models[name]

    def test_split(self, bundle: ModelBundle) -> LabelledImages:
        """The checkpoint's saved test split (loaded once per split and image size); DataError when unavailable."""
        key = (bundle.ckpt.get("split_fingerprint"), bundle.ckpt["img_size"])
        with self._test_lock:
            if key not in self._tests:
                try:
                    self._tests[key] = load_test_split(bundle.ckpt, self.source_dir, self.split_file)
                except CheckpointError as e:
                    raise DataError(f"{bundle.name}: {e}") from None
                except OSError as e:
                    raise DataError(f"the test split cannot be read ({e})") from None
            return self._tests[key]


def load_page(path: Path = PAGE_FILE) -> str:
    """The page's HTML, with the upload limit filled in; the file is read once, when app.py is imported."""
    html = path.read_text(encoding="utf-8")
    if html.count(MAX_BYTES_SLOT) != 1:
        raise RuntimeError(f"{path} must hold {MAX_BYTES_SLOT} exactly once; restore it from git")
    return html.replace(MAX_BYTES_SLOT, str(int(MAX_UPLOAD_BYTES)))  # a number: nothing to escape


PAGE = load_page()


class Deadline:
    """Shuts the reading side of a socket when time is up, which ends any read blocked on it: a client that sends
    slowly, or stops, holds its connection no longer than that (the answer can still be written)."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire, args=(sock,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:  # already closed
            pass

    def cancel(self) -> None:
        self._timer.cancel()


class Handler(BaseHTTPRequestHandler):
    """The page and its JSON endpoints; every failure becomes a JSON {"error": ...} answer.

    A request is read whole (line, headers, body) under a deadline before it waits for one of the server's model
    slots, so clients that stall or trickle hold a connection thread for a few seconds, never a model slot.
    """

    server: "AppServer"
    timeout = READ_SECONDS  # each read of the socket; the Deadline bounds the whole request

    def handle_one_request(self) -> None:
        self._deadline = Deadline(self.connection, self.server.read_seconds)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError) as e:  # the client went away while we read or answered
            self._dropped(f"it left before the answer was sent ({type(e).__name__})")
        finally:
            self._deadline.cancel()

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post, with_body=True)

    def _answer(self, route, with_body: bool = False) -> None:
        """Check the Host, read the body, wait for a model slot, run the route; errors become 4xx/5xx answers."""
        if self._deadline.expired:  # what came before the deadline is a partial request
            self._dropped(f"its request did not arrive within {self.server.read_seconds:g} s")
            return
        if not self._host_allowed():
            return
        body = self._read_body() if with_body else b""
        if body is None:
            return
        self._deadline.cancel()
        try:
            if self.server.slots.acquire(timeout=self.server.slot_wait):
                try:
                    self._route(route, body)
                finally:
                    self.server.slots.release()
            else:
                self._busy("every model slot stayed taken")
        finally:
            self.server.bodies.release(len(body))

    def _route(self, route, body: bytes) -> None:
        """Run a route; turn known errors into 4xx answers and anything else into a logged 500."""
        try:
            route(urlsplit(self.path), body)
        except (ConnectionError, TimeoutError):  # the client left: handle_one_request logs it, not as a 500
            raise
        except UserError as e:  # a checkpoint, its weights or the data: the message says what to do
            self._json({"error": str(e)}, 400)
        except Exception as e:  # the server must outlive any one bad request
            traceback.print_exc()
            self._json({"error": f"internal error ({type(e).__name__}: {e}); see the server's log"}, 500)

    def _host_allowed(self) -> bool:
        """A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host (403); HTTP/1.0 may omit it."""
        hosts = self.headers.get_all("Host") or []
        if host_allowed(hosts[0], self.server.host) if len(hosts) == 1 else \
                not hosts and self.request_version == "HTTP/1.0":
            return True
        self.close_connection = True  # a POST body is left unread
        names = ", ".join(dict.fromkeys(["localhost", "127.0.0.1", "[::1]", self.server.host]))
        self._json({"error": f"this server answers only requests addressed to {names}; "
                             f"open http://127.0.0.1:{self.server.server_address[1]}/"}, 403)
        return False

    def _read_body(self) -> bytes | None:
        """The upload, read whole within the deadline and the server's byte budget; None once answered otherwise."""
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # a negative length would read until the client stops
            self.close_connection = True
            self._json({"error": "the upload has no valid Content-Length"}, 411)
            return None
        length = int(length)
        if length > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the body is not read, so the connection cannot be reused
            self._json({"error": f"the file is {length / 2**20:.1f} MB, more than the {MAX_UPLOAD_BYTES // 2**20} MB "
                                 "allowed; upload a smaller image"}, 413)
            return None
        if not self.server.bodies.reserve(length):
            self._busy("the uploads being read fill the memory budget")
            return None
        try:
            data = self.rfile.read(length)
        except BaseException:  # a reset or a socket timeout: the bytes held for it go back to the budget
            self.server.bodies.release(length)
            raise
        if len(data) == length:
            return data
        self.server.bodies.release(length)
        self.close_connection = True
        if self._deadline.expired:
            self._json({"error": f"the upload did not arrive within {self.server.read_seconds:g} s; "
                                 "try again"}, 408)
        else:
            self._dropped(f"it closed the connection after {len(data)} of {length} bytes")
        return None

    def _busy(self, why: str) -> None:
        """503 with Retry-After: the client should try again shortly (a reset connection would tell it nothing)."""
        self.close_connection = True
        self.log_message("busy: %s; answered 503", why)
        self._json({"error": f"the server is busy ({why}); try again in a moment"}, 503,
                   {"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _dropped(self, why: str) -> None:
        """One log line for a client that left or stalled; nothing is answered."""
        self.close_connection = True
        self.log_message("dropped client: %s", why)

    def _bundle(self, query: dict) -> ModelBundle:
        """The model of the ?ckpt= checkpoint, else of the default one."""
        return self.server.checkpoints.get(query.get("ckpt", [self.server.checkpoints.default])[0])

    def _get(self, url, _body: bytes) -> None:
        query = parse_qs(url.query)
        cps = self.server.checkpoints
        if url.path == "/":
            self._send(PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/checkpoints":
            self._json({"checkpoints": list(cps.available()), "default": cps.default})
        elif url.path == "/test-images":
            bundle = self._bundle(query)
            try:
                test = cps.test_split(bundle)
            except (DataError, CheckpointError) as e:
                self._json({"images": [], "note": f"no test images: {e}"})
                return
            names = bundle.predictor.names
            images = [{"name": n, "label": names[test.labels[i]]} for i, n in zip(test.indices, test.names)]
            self._json({"images": images,
                        "note": test.description})
        elif url.path.startswith("/test-image/"):
            bundle = self._bundle(query)
            test = cps.test_split(bundle)
            k = url.path.rsplit("/", 1)[1]
            if not (k.isascii() and k.isdigit()) or int(k) >= len(test.indices):
                self._json({"error": f"no test image {k!r}; pick one from the list"}, 404)
                return
            i = test.indices[int(k)]
            result = predict_array(bundle, np.asarray(test.images[i]))
            self._json({**result, "name": test.names[int(k)], "true_label": bundle.predictor.names[test.labels[i]]})
        else:
            self._json({"error": f"no page {url.path}"}, 404)

    def _post(self, url, data: bytes) -> None:
        if url.path != "/predict":
            self._json({"error": f"no endpoint {url.path}"}, 404)
            return
        result = predict_image(self._bundle(parse_qs(url.query)), data)
        self._json(result, 400 if "error" in result else 200)

    def _json(self, obj: dict, status: int = 200, headers: dict | None = None) -> None:
        self._send(json.dumps(obj, allow_nan=False).encode(), "application/json", status, headers)

    def _send(self, body: bytes, content_type: str, status: int = 200, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Only this server's own page, endpoints and data: URLs; nothing from elsewhere.
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; img-src data:; connect-src 'self'")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def host_allowed(host: str, own: str) -> bool:
    """Whether a Host header (with or without a port) names a loopback address, localhost, or own, the --host."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(:\d{1,5})?", host.strip())
    name = m and m.group(1).lower().removeprefix("[").removesuffix("]")
    if not name:
        return False
    if name in ("localhost", own.lower().removeprefix("[").removesuffix("]")):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False


class ByteBudget:
    """A count of bytes held at once, up to a limit; a reservation that does not fit is refused, not waited for."""

    def __init__(self, limit: int):
        self.limit, self.in_use, self._lock = limit, 0, threading.Lock()

    def reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.in_use and self.in_use + nbytes > self.limit:  # one upload alone always fits
                return False
            self.in_use += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


class AppServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that carries the checkpoints for its handlers; its accept loop never waits.

    Each connection gets a thread (up to max_connections; past them, 503 at once) that reads its request under
    a deadline; at most max_handlers requests use a model at once, the others wait for a slot (503 after
    slot_wait seconds). The listen backlog is large, so a burst of clients queues instead of being reset.
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], checkpoints: Checkpoints, max_handlers: int = MAX_HANDLERS,
                 max_connections: int = MAX_CONNECTIONS, read_seconds: float = READ_SECONDS,
                 slot_wait: float = SLOT_WAIT_SECONDS):
        self.checkpoints = checkpoints
        self.host = address[0]  # as given (--host), before it is resolved
        self.slots = threading.BoundedSemaphore(max_handlers)
        self.bodies = ByteBudget(BODY_BUDGET)
        self.read_seconds, self.slot_wait = read_seconds, slot_wait
        self.max_connections = max_connections
        self._connections = threading.BoundedSemaphore(max_connections)
        self._refusals = threading.BoundedSemaphore(64)  # connections being answered 503 at once
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts a thread that releases the connection
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def _refuse(self, request: socket.socket, client_address) -> None:
        """503 when every connection thread is taken, from a short-lived thread of its own (the accept loop goes on)."""
        sys.stderr.write(f"{client_address[0]} - busy: {self.max_connections} connections open; answered 503\n")
        if not self._refusals.acquire(blocking=False):  # a flood: close without an answer rather than pile up threads
            self.shutdown_request(request)
            return
        threading.Thread(target=self._answer_busy, args=(request,), daemon=True).start()

    def _answer_busy(self, request: socket.socket) -> None:
        """Send the 503, then read what the client still sends for up to a second, so closing does not reset it."""
        body = json.dumps({"error": "the server is busy (too many connections); try again in a moment"}).encode()
        try:
            request.settimeout(1.0)
            request.sendall(BUSY % (RETRY_AFTER_SECONDS, len(body), body))
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and request.recv(1 << 16):
                pass
        except OSError:
            pass
        finally:
            request.close()
            self._refusals.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away is one log line; anything else keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            sys.stderr.write(f"{client_address[0]} - dropped client: it left ({type(error).__name__})\n")
            return
        super().handle_error(request, client_address)


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Local web demo: top-5 classes and Grad-CAM for uploaded images.")
    parser.add_argument("--ckpt", default="runs/best.pt", help="checkpoint selected when the page opens")
    parser.add_argument("--runs-dir", default="runs", help="offers every <runs-dir>/*/best.pt and <runs-dir>/best.pt")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--source-dir", default=None,
                        help="folder the saved split was drawn from (default: the one the run was trained on)")
    parser.add_argument("--split-file", default=None, help="saved split (default: the run's <output-dir>/split.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def main(args) -> None:
    device = resolve_device(args.device)
    if device.type == "cpu":
        # One image per request: intra-op threads gain little and, next to a training or a second request,
        # oversubscribe the cores (a MobileNetV2 Grad-CAM took 3 s with 2 threads, 0.05 s with 1, on 2 busy cores).
        torch.set_num_threads(1)
    checkpoints = Checkpoints(Path(args.runs_dir), Path(args.ckpt), device, args.source_dir, args.split_file)
    bundle = checkpoints.get(checkpoints.default)  # a bad --ckpt stops here, not at the first request
    try:
        server = AppServer((args.host, args.port), checkpoints)
    except OSError as e:
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                         "pass another --port") from None
    host, port = server.server_address[:2]
    print(f"serving {bundle.name} ({bundle.ckpt['arch']}/{bundle.ckpt['mode']} on {bundle.device}) "
          f"at http://{host}:{port}/ ; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
