"""racnn app without a browser: the JSON endpoint against the API, bad input, limits, busy, batching, the CLI.

The server runs for real (uvicorn on a free 127.0.0.1 port, in a thread); requests go through urllib/http.client.
The browser test is tests/test_app_browser.py.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="racnn app needs the app extra: pip install 'racnn[app]'")
pytest.importorskip("uvicorn", reason="racnn app needs the app extra: pip install 'racnn[app]'")

from inference_fixtures import CLASS_NAMES, IMAGE_SIZES, app_files  # noqa: E402
from racnn.app import MISSING_EXTRA  # noqa: E402
from racnn.app.inference import Busy, ImageError, InferenceQueue, decode_image  # noqa: E402
from racnn.app.server import BackgroundServer, Limits, RequestError, bind, create_app, parse_multipart  # noqa: E402
from racnn.cli import main as cli_main  # noqa: E402
from racnn.data.io import load_image  # noqa: E402
from racnn.inference.api import Predictor, load  # noqa: E402
from racnn.pictures.visualize import SCALE_COLORS  # noqa: E402

BOUNDARY = "racnn-test-7c1e"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return app_files(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def predictor(files) -> Predictor:
    return load(files["checkpoint"], device="cpu")


@pytest.fixture(scope="module")
def server(predictor):
    with BackgroundServer(create_app(predictor, name="tiny.pt")) as running:
        yield running


# -------------------------------------------------------------------------------------------------------------
# helpers


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser's FormData sends it."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    ]
    for filename, data in files:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        parts.append(f"{head}Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def request(url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, dict, Any]:
    """(status, JSON body, headers) of a GET (no body) or POST."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def post_files(url: str, files: list[tuple[str, bytes]], query: str = "") -> tuple[int, dict, Any]:
    body, content_type = multipart(files)
    return request(f"{url}/predict{query}", body, content_type)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims ``width x height`` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def without_file(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in ("file", "crops")}


def assert_same_prediction(got: dict, expected: dict) -> None:
    assert got["prediction"]["index"] == expected["prediction"]["index"]
    np.testing.assert_allclose([c["prob"] for c in got["topk"]], [c["prob"] for c in expected["topk"]], atol=1e-5)
    for scale, box in expected["boxes"].items():
        np.testing.assert_allclose(got["boxes"][scale], box, atol=1e-3)
    assert without_file(got).keys() == without_file(expected).keys()


class Gated:
    """A predictor whose forward passes wait for ``gate``; ``entered`` is set once a pass has started."""

    def __init__(self, inner: Predictor, fail: bool = False) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail = fail
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, images, **kwargs):
        self.calls.append(len(images))
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail:
            self.fail = False
            raise RuntimeError("boom")
        return self.inner.predict(images, **kwargs)


# -------------------------------------------------------------------------------------------------------------
# the endpoint against the API


def test_health_reports_model_limits_and_colours(server):
    status, body, _ = request(server.url + "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["model"] == {"name": "tiny.pt", "backbone": "tiny", "num_classes": 4, "num_scales": 3,
                             "input_size": 64, "device": "cpu"}  # fmt: skip
    assert body["limits"] == {"max_mb": 20.0, "max_files": 8, "max_megapixels": 40.0, "max_requests": 32,
                              "max_parts": 64, "header_timeout_s": 10.0, "body_timeout_s": 60.0,
                              "max_connections": 256}  # fmt: skip
    assert body["scale_colors"] == {"2": "#ff0000", "3": "#00ff00", "4": "#0000ff"}
    assert len(SCALE_COLORS) == 3 and body["topk"] == 5


def test_page_and_its_files_are_served_from_the_package(server):
    with urllib.request.urlopen(server.url + "/") as response:
        html = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert 'id="file-input"' in html and "/static/app.js" in html and "/static/app.css" in html
    assert "default-src 'self'" in policy  # the browser loads nothing from elsewhere
    assert "http://" not in html and "https://" not in html
    for name, kind in [("app.js", "text/javascript"), ("app.css", "text/css")]:
        with urllib.request.urlopen(f"{server.url}/static/{name}") as response:
            assert response.headers["Content-Type"].startswith(kind)
            text = response.read().decode()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert request(server.url + "/static/server.py")[1] == {"error": "no such file: /static/server.py"}
    assert request(server.url + "/static/..%2Fserver.py")[0] == 404


def test_multipart_and_raw_uploads_answer_as_the_api_does(server, predictor, files):
    names = list(IMAGE_SIZES)
    expected = [p.to_dict() for p in predictor.predict([files[n] for n in names])]
    status, body, _ = post_files(server.url, [(n, files[n].read_bytes()) for n in names])
    assert status == 200 and [r["file"] for r in body["results"]] == names
    for got, want in zip(body["results"], expected, strict=True):
        assert_same_prediction(got, want)
        assert "crops" not in got and got["image_size"] == want["image_size"]
        assert set(got["scales"]) == {"1", "2", "3"} and set(got["fused"]) == {"1+2", "1+2+3"}
        assert len(got["topk"]) == 4  # topk 5 cut to the 4 classes, as the API does
    raw = files["tall.jpg"].read_bytes()
    status, body, _ = request(f"{server.url}/predict?filename=tall.jpg", raw, "image/jpeg")
    assert status == 200 and body["results"][0]["file"] == "tall.jpg"
    assert_same_prediction(body["results"][0], expected[names.index("tall.jpg")])


def test_crops_are_the_zoomed_inputs_as_png(server, predictor, files):
    status, body, _ = post_files(server.url, [("square.png", files["square.png"].read_bytes())], "?crops=1")
    assert status == 200
    crops = body["results"][0]["crops"]
    [expected] = predictor.predict(files["square.png"], return_crops=True)
    assert set(crops) == {"2", "3"}
    for scale, url in crops.items():
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        want = np.asarray(expected.crops[int(scale) - 2], dtype=np.int16)
        assert image.size == (48, 48) and np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - want).max() <= 2


def test_good_and_bad_files_in_one_request(server, files):
    uploads = [("wide.png", files["wide.png"].read_bytes()), ("notes.jpg", files["notes.jpg"].read_bytes())]
    status, body, _ = post_files(server.url, uploads)
    assert status == 200
    good, bad = body["results"]
    assert good["file"] == "wide.png" and good["prediction"]["name"] in CLASS_NAMES
    assert bad == {"file": "notes.jpg", "error": "not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF"}


# -------------------------------------------------------------------------------------------------------------
# bad input: a clear answer, and the server stays up


def _truncated(files) -> bytes:
    data = files["tall.jpg"].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda files: files["notes.jpg"].read_bytes(), "not an image: expected JPEG, PNG"),
        (_truncated, "truncated or corrupt image"),
        (lambda files: files["wide.png"].read_bytes()[:200], "truncated or corrupt image"),
        (lambda files: png_header(9000, 9000), "image of 9000 x 9000 pixels is over the limit of 40 megapixels"),
        (lambda files: png_header(100_000, 100_000), "too many pixels"),  # PIL's own guard, at open
        (lambda files: b"", "empty file"),
    ],
    ids=["text", "truncated-jpeg", "truncated-png", "over-pixel-limit", "decompression-bomb", "empty-file"],
)
def test_unreadable_file_is_422_with_its_reason(server, files, make, message):
    status, body, _ = post_files(server.url, [("upload.png", make(files))])
    assert status == 422, body
    assert body["error"].startswith("no image could be read: " + message)
    assert body["results"][0]["file"] == "upload.png" and body["results"][0]["error"].startswith(message)


def test_bad_requests_get_clear_statuses_and_the_server_stays_up(server, files):
    png = files["wide.png"].read_bytes()
    cases = [
        (request(server.url + "/predict", b"", "image/png"), 400, "empty request"),
        (request(server.url + "/predict", *multipart([], {"note": "hi"})), 400, "no file in the request"),
        (post_files(server.url, [(f"{i}.png", png) for i in range(9)]), 400, "too many files: 9 in one request"),
        (request(server.url + "/predict", b'{"image": 1}', "application/json"), 415, "cannot read a application/json"),
        (request(server.url + "/predict", b"--x\r\n", "multipart/form-data"), 400, "without a boundary"),
        (request(server.url + "/predict", b"--zz\r\nbroken", "multipart/form-data; boundary=zz"), 400, "malformed"),
        (request(server.url + "/predict"), 405, "Method Not Allowed"),
        (request(server.url + "/nowhere"), 404, "Not Found"),
    ]  # fmt: skip
    for (status, body, _), want_status, message in cases:
        assert (status, message in body["error"]) == (want_status, True), body
    status, body, _ = post_files(server.url, [("wide.png", png)])
    assert status == 200 and body["results"][0]["prediction"]["name"] in CLASS_NAMES
    assert request(server.url + "/health")[0] == 200


def test_uploads_over_max_mb_are_refused_before_and_while_reading(predictor, files):
    data = files["wide.png"].read_bytes()
    limits = Limits(max_bytes=len(data) - 1)
    with BackgroundServer(create_app(predictor, limits)) as server:
        status, body, _ = request(server.url + "/predict", data, "image/png")  # Content-Length tells
        assert status == 413 and body["error"].startswith(f"upload of {len(data) / 2**20:.1f} MB is over the limit")
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        chunks = iter([data[:1000], data[1000:]])  # no Content-Length: chunked, counted while reading
        connection.request("POST", "/predict", body=chunks, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        assert response.status == 413 and "is over the limit" in json.loads(response.read())["error"]
        connection.close()
        small = files["tall.jpg"].read_bytes()
        assert len(small) <= limits.max_bytes and request(server.url + "/predict", small, "image/jpeg")[0] == 200


def test_nothing_is_written_to_disk(predictor, tmp_path, monkeypatch):
    """A 2 MB upload (multipart parsers often spool over 1 MB to a temporary file) leaves no file anywhere."""
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir(), cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(cwd)
    noise = np.random.default_rng(0).integers(0, 256, (800, 900, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert buffer.tell() > 2 * 2**20
    with BackgroundServer(create_app(predictor)) as server:
        status, body, _ = post_files(server.url, [("noise.png", buffer.getvalue())], "?crops=1")
    assert status == 200 and body["results"][0]["image_size"] == [900, 800]
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []


# -------------------------------------------------------------------------------------------------------------
# under load: shared model, batching, busy


def test_concurrent_clients_each_get_their_own_answer(server, predictor, files):
    names = list(IMAGE_SIZES) * 6
    predictions = predictor.predict([files[n] for n in IMAGE_SIZES])
    expected = {n: p.to_dict() for n, p in zip(IMAGE_SIZES, predictions, strict=True)}
    before = request(server.url + "/health")[1]["queue"]

    def one(name: str) -> tuple[str, int, dict]:
        status, body, _ = post_files(server.url, [(name, files[name].read_bytes())])
        return name, status, body

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, names))
    for name, status, body in answers:
        assert status == 200 and body["results"][0]["file"] == name
        assert_same_prediction(body["results"][0], expected[name])
    queue = request(server.url + "/health")[1]["queue"]
    assert queue["images"] - before["images"] == len(names)  # every image went through the one shared queue
    assert queue["in_flight"] == 0 and queue["pending"] == 0


def test_queue_batches_what_waits_while_the_model_works(predictor, files):
    gated = Gated(predictor)
    queue = InferenceQueue(gated, topk=2, max_batch=4)
    queue.start()
    image = predictor.prepare(Image.open(files["wide.png"]))
    first = queue.submit([image])
    assert gated.entered.wait(10)  # the worker is inside the first forward pass
    waiting = [future for _ in range(6) for future in queue.submit([image], crops=True)]
    assert queue.pending == 6
    gated.gate.set()
    results = [f.result(30) for f in first + waiting]
    queue.close()
    assert gated.calls == [1, 4, 2]  # 6 waiting images: a full batch of 4, then the other 2
    assert (queue.batches, queue.images, queue.largest_batch) == (3, 7, 4)
    assert results[0].crops is None and all(len(r.crops) == 2 for r in results[1:])
    assert all(len(r.topk) == 2 and r.top == results[0].top for r in results)


def test_queue_is_bounded_and_closing_fails_the_waiting(predictor, files):
    gated = Gated(predictor)
    queue = InferenceQueue(gated, max_pending=3)
    queue.start()
    image = predictor.prepare(Image.open(files["wide.png"]))
    running = queue.submit([image])
    assert gated.entered.wait(10)
    waiting = queue.submit([image, image])
    with pytest.raises(Busy, match="busy: 2 images are waiting"):
        queue.submit([image, image])  # all or none: 2 + 2 > 3
    assert queue.pending == 2
    closer = threading.Thread(target=queue.close)
    closer.start()
    for future in waiting:
        with pytest.raises(Busy, match="shutting down"):
            future.result(10)
    gated.gate.set()
    closer.join(10)
    assert running[0].result(10).top.name in CLASS_NAMES  # the batch under way still finishes
    with pytest.raises(Busy, match="shutting down"):
        queue.submit([image])


def test_full_server_answers_busy_503_then_serves_again(predictor, files):
    gated = Gated(predictor)
    png = files["wide.png"].read_bytes()
    with BackgroundServer(create_app(gated, Limits(max_requests=1))) as server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_files, server.url, [("wide.png", png)])
        assert gated.entered.wait(30)
        status, body, headers = post_files(server.url, [("wide.png", png)])
        assert status == 503 and body["error"] == "busy: 1 requests in progress; try again shortly"
        assert headers["Retry-After"] == "1"
        gated.gate.set()
        assert first.result(30)[0] == 200
        assert post_files(server.url, [("wide.png", png)])[0] == 200


def test_a_failing_forward_pass_is_a_500_and_the_server_stays_up(predictor, files):
    gated = Gated(predictor, fail=True)
    gated.gate.set()
    png = files["wide.png"].read_bytes()
    with BackgroundServer(create_app(gated)) as server:
        status, body, _ = post_files(server.url, [("wide.png", png)])
        assert status == 500 and body["error"] == "internal error: RuntimeError: boom"
        status, body, _ = post_files(server.url, [("wide.png", png)])
        assert status == 200 and body["results"][0]["prediction"]["name"] in CLASS_NAMES


# -------------------------------------------------------------------------------------------------------------
# pieces


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_decode_image_reads_as_load_image_does(tmp_path, mode):
    rng = np.random.default_rng(1)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "image.png"
    image.save(path)
    decoded = decode_image(path.read_bytes(), max_pixels=10_000)
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(load_image(path)))
    with pytest.raises(ImageError, match="30 x 20 pixels is over the limit of 0.0005 megapixels"):
        decode_image(path.read_bytes(), max_pixels=500)


def test_decode_image_refuses_formats_outside_the_list(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PPM")  # PIL reads it, a browser does not send it
    with pytest.raises(ImageError, match="not an image"):
        decode_image(buffer.getvalue(), max_pixels=10_000)


def test_parse_multipart_keeps_files_in_order_and_skips_fields():
    body, content_type = multipart([("a b.png", b"\x00\x01\r\n--not-the-boundary"), ("", b"xyz")], {"note": "hi"})
    body = body.replace(b'filename=""', b"filename*=UTF-8''%C3%A9t%C3%A9.jpg")  # RFC 2231 name
    uploads = parse_multipart(body, content_type)
    assert [(u.name, u.data) for u in uploads] == [("a b.png", b"\x00\x01\r\n--not-the-boundary"), ("été.jpg", b"xyz")]
    with pytest.raises(RequestError, match="no closing boundary"):
        parse_multipart(body[:-10], content_type)


# -------------------------------------------------------------------------------------------------------------
# the command


def test_cli_without_the_extra_says_how_to_install_it(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert cli_main(["app", "--checkpoint", str(files["checkpoint"])]) == 2
    err = capsys.readouterr().err
    assert err == MISSING_EXTRA + "\n" and "pip install 'racnn[app]'" in err and err.count("\n") == 1


def test_help_imports_no_web_stack():
    code = "import sys; from racnn.cli import get_args_parser; get_args_parser(); " \
           "print(sorted({'starlette', 'uvicorn'} & set(sys.modules)))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_usage_errors_are_one_line(files, tmp_path, capsys):
    assert cli_main(["app", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli_main(["app", "--checkpoint", str(files["checkpoint"]), "--max-files", "0"]) == 2
    assert capsys.readouterr().err == "error: --max-files 0: must be positive and at most 1,000,000\n"
    assert cli_main(["app", "--checkpoint", str(files["checkpoint"]), "--port", "70000"]) == 2
    assert capsys.readouterr().err == "error: --port 70000: must be 0-65535 (0: any free port)\n"


def test_cli_serves_until_interrupted(files):
    command = [sys.executable, "-m", "racnn", "app", "--checkpoint", str(files["checkpoint"]), "--port", "0",
               "--device", "cpu", "--max-files", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline(), process.stdout.readline()]
        assert lines[0].startswith("racnn app: tiny.pt (tiny, 4 classes) on cpu"), lines
        url = lines[1].split()[1].rstrip("/")
        assert url.startswith("http://127.0.0.1:")
        status, body, _ = request(url + "/health")
        assert status == 200 and body["limits"]["max_files"] == 2
        assert post_files(url, [("wide.png", files["wide.png"].read_bytes())])[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_bound_socket_is_tcp_so_responses_are_not_held_by_nagle():
    """asyncio disables Nagle's algorithm only on sockets whose proto is TCP; with it, each answer waits ~40 ms."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_bench_app_reduced():
    command = [sys.executable, "benchmarks/bench_app.py", "--backbone", "tiny", "--input-size", "64", "--zoom-size",
               "48", "--classes", "4", "--requests", "6", "--clients", "2", "--warmup", "1", "--threads", "1",
               "--photo-size", "120", "90"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "| clients | requests | requests/s | p50 ms | p95 ms | errors | mean batch | server peak RSS MiB |"
        in done.stdout
    )
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 2 |"))
    clients, requests, rps, p50, p95, errors, batch, rss = (cell.strip() for cell in row.strip("|").split("|"))
    assert (requests, errors) == ("6", "0") and float(rps) > 0 and 0 < float(p50) <= float(p95)
    assert float(batch) >= 1 and float(rss) > 100
