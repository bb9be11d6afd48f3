"""Requests/s, latency, errors and peak memory of ``racnn app`` under concurrent clients, on this machine only.

For each client count C: start ``racnn app`` in a fresh process on a free 127.0.0.1 port (so the memory is the
server's alone: the peak resident set size, VmHWM of /proc/PID/status, of the whole process), wait for /health,
send warm-up requests, then C client threads send --requests POST /predict requests in all, each one photo as
multipart form data as the page sends it, over one keep-alive connection per client. A request is an error
unless it is answered 200 with the same top-k and boxes as the warm-up answer for that photo. Prints a markdown
table; the server's mean batch (images per forward pass) comes from its /health counters. Clients connect to
127.0.0.1 only, and at most --requests requests are sent per row.

Without --checkpoint, a checkpoint of random weights is written to a temporary folder (speed does not depend on
the weights); --backbone, --input-size, --zoom-size and --classes choose its model.

With --slow-headers H and/or --slow-bodies B, each client count is measured twice on one server: first alone, then
beside H sockets that send a request's headers one byte every half second and B sockets that send their headers
and then their declared 10 MB body one byte every half second (both opened again whenever the server closes them),
so the table shows the normal clients' latency and errors without and with the slow ones, and how many slow
sockets the server closed meanwhile.

  python benchmarks/bench_app.py --backbone tf_efficientnet_lite0 --input-size 224 --zoom-size 224 --classes 50
  python benchmarks/bench_app.py --checkpoint runs/demo --requests 400 --clients 1 4 16
  python benchmarks/bench_app.py --requests 100 --clients 4 --slow-headers 300 --slow-bodies 40
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # the only host this benchmark talks to
BOUNDARY = "racnn-bench-5d2f"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a racnn checkpoint (default: random weights, model from the flags below)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="random-weight model's backbone")
    parser.add_argument("--input-size", type=int, default=224, help="random-weight model's scale-1 side (default 224)")
    parser.add_argument("--zoom-size", type=int, default=224, help="random-weight model's zoomed side (default 224)")
    parser.add_argument("--classes", type=int, default=50, help="random-weight model's classes (default 50)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per client count (default 200)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients (default 1 4 16)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per photo first (default 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="the server's --batch-size (default 16)")
    parser.add_argument(
        "--threads", type=int, default=2, help="the server's torch threads, OMP_NUM_THREADS (default 2)"
    )
    parser.add_argument("--device", default="cpu", help="the server's --device (default cpu)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=[500, 375], help="photo width height (500 375)")
    parser.add_argument("--slow-headers", type=int, default=0, help="sockets trickling their headers (default 0)")
    parser.add_argument("--slow-bodies", type=int, default=0, help="sockets trickling a 10 MB body (default 0)")
    return parser


class SlowClients(threading.Thread):
    """Sockets that hold the server as long as it lets them: ``headers`` of them send a request's headers one byte
    per ``interval``, ``bodies`` send whole headers and then their declared body one byte per ``interval``. A socket
    the server closes is opened again; ``closed`` counts them."""

    def __init__(self, port: int, headers: int, bodies: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.kinds = ["headers"] * headers + ["body"] * bodies
        self.closed = 0
        self.stop = threading.Event()

    def _open(self, kind: str) -> socket.socket | None:
        head = f"POST /predict HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        if kind == "body":
            head += f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {10 * 2**20}\r\n\r\n"
        try:
            sock = socket.create_connection((HOST, self.port), timeout=5)
            sock.sendall(head.encode()[: -1 if kind == "headers" else None])
        except OSError:
            return None
        return sock

    def run(self) -> None:
        sockets: list[socket.socket | None] = [None] * len(self.kinds)
        while not self.stop.is_set():
            for i, kind in enumerate(self.kinds):
                if sockets[i] is None:
                    sockets[i] = self._open(kind)
                    continue
                try:
                    sockets[i].send(b"x" if kind == "body" else b"X")
                except OSError:  # closed by the server: count it, open another
                    sockets[i].close()
                    sockets[i] = None
                    self.closed += 1
            self.stop.wait(self.interval)
        for sock in sockets:
            if sock is not None:
                sock.close()


def random_checkpoint(args: argparse.Namespace, folder: Path) -> Path:
    import torch

    from racnn.checkpoint import save_checkpoint
    from racnn.config import Config, ModelConfig, config_to_dict
    from racnn.modeling.model import RACNN

    torch.manual_seed(0)
    model_cfg = ModelConfig(
        args.backbone, num_classes=args.classes, input_size=args.input_size, zoom_size=args.zoom_size
    )
    model = RACNN.from_config(model_cfg).eval()
    payload = {
        "config": config_to_dict(Config(model=model_cfg)),
        "model": model.state_dict(),
        "class_names": [f"class {i}" for i in range(args.classes)],
    }
    return save_checkpoint(folder / "random.pt", payload)


def photos(width: int, height: int, count: int = 3) -> list[tuple[str, bytes]]:
    """JPEG photos of smooth colour fields with noise: decoding costs what a real photo's does."""
    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        ys, xs = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 2 * np.pi, 3)
        image = np.stack([127 + 90 * np.sin(xs / (23 + 9 * c) + ys / (31 + 5 * c) + phase[c]) for c in range(3)], -1)
        image = (image + rng.normal(0, 12, image.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        out.append((f"photo{seed}.jpg", buffer.getvalue()))
    return out


def multipart(name: str, data: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    return f"{head}Content-Type: image/jpeg\r\n\r\n".encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection to the local server, with Nagle's algorithm off as browsers have it (http.client
    sends the headers and a large body in two writes; with Nagle the second waits for a delayed ACK, ~40 ms)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=300)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def call(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    text = response.read()
    try:
        return response.status, json.loads(text)
    except ValueError:  # e.g. uvicorn's own plain-text 503 "Exceeded concurrency limit."
        return response.status, {"error": text.decode(errors="replace")[:200]}


def answer(record: dict) -> tuple:
    """What must not change between requests for one photo (up to float noise of the batch composition)."""
    return (
        [c["index"] for c in record["topk"]],
        np.round([c["prob"] for c in record["topk"]], 4).tolist(),
        {scale: np.round(box, 1).tolist() for scale, box in record["boxes"].items()},
    )


def start_server(args: argparse.Namespace, checkpoint: Path, clients: int, log: Path) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "racnn", "app", "--checkpoint", str(checkpoint), "--host", HOST, "--port", "0",
               "--device", args.device, "--batch-size", str(args.batch_size), "--queue", str(max(32, 2 * clients)),
               "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with log.open("w") as stderr:
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if line.startswith("open http://"):
            return server, int(line.split()[1].rstrip("/").rsplit(":", 1)[1])
        if not line and server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"racnn app did not start; its log:\n{log.read_text()[-2000:]}")


def peak_rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")  # not Linux
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024


def run_row(args: argparse.Namespace, checkpoint: Path, clients: int, pictures: list, folder: Path) -> list[dict]:
    server, port = start_server(args, checkpoint, clients, folder / f"server-{clients}.log")
    try:
        control = connect(port)
        expected = {}
        for name, data in pictures:
            for _ in range(args.warmup):
                status, body = call(control, "POST", "/predict", multipart(name, data))
                if status != 200:
                    raise SystemExit(f"warm-up request answered {status}: {body}")
                expected[name] = answer(body["results"][0])
        rows = [measure(args, port, clients, pictures, expected, control)]
        if args.slow_headers or args.slow_bodies:
            slow = SlowClients(port, args.slow_headers, args.slow_bodies)
            slow.start()
            time.sleep(3)  # let them connect and settle in
            try:
                rows.append(measure(args, port, clients, pictures, expected, None))
            finally:
                slow.stop.set()
                slow.join(30)
            rows[-1]["slow"] = f"{args.slow_headers} + {args.slow_bodies} ({slow.closed} closed by the server)"
        rss = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    for row in rows:
        row["rss"] = rss
    return rows


def measure(
    args: argparse.Namespace,
    port: int,
    clients: int,
    pictures: list,
    expected: dict,
    control: http.client.HTTPConnection | None,
) -> dict:
    """One timed phase of ``clients`` threads sending --requests requests in all to the running server."""
    if control is None:
        control = connect(port)
    before = call(control, "GET", "/health")[1].get("queue")
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(args.requests):
        todo.put(i)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = connect(port)
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            name, data = pictures[i % len(pictures)]
            start = time.perf_counter()
            try:
                status, body = call(connection, "POST", "/predict", multipart(name, data))
                problem = None if status == 200 else f"{status}: {body.get('error')}"
                if problem is None and answer(body["results"][0]) != expected[name]:
                    problem = f"a different answer for {name}"
            except (OSError, http.client.HTTPException, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
                connection.close()
                connection = connect(port)
            with lock:
                latencies.append(time.perf_counter() - start)
                if problem:
                    errors.append(problem)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    control.close()  # idle through the run: the server's keep-alive timeout has closed it
    control = connect(port)
    after = call(control, "GET", "/health")[1].get("queue")
    control.close()
    if before is None or after is None:  # /health was refused (a server without the connection guards)
        before = after = {"batches": 0, "images": float("nan")}
    batches = max(1, after["batches"] - before["batches"])
    return {
        "slow": "none",
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50": 1e3 * float(np.percentile(latencies, 50)),
        "p95": 1e3 * float(np.percentile(latencies, 95)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "mean_batch": (after["images"] - before["images"]) / batches,
    }


def main() -> None:
    args = get_args_parser().parse_args()
    if args.requests < 1 or min(args.clients) < 1:
        raise SystemExit("--requests and --clients must be at least 1")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(args, folder)
        pictures = photos(*args.photo_size)
        rows = []
        for clients in args.clients:
            rows += run_row(args, checkpoint, clients, pictures, folder)
            print(f"{clients} clients: {rows[-1]}", file=sys.stderr, flush=True)

    model = (
        args.checkpoint or f"random {args.backbone}, {args.input_size} / {args.zoom_size} px, {args.classes} classes"
    )
    print(
        f"\nracnn app on {HOST}: {model}; server --device {args.device}, --batch-size {args.batch_size}, "
        f"{args.threads} torch threads; photos {args.photo_size[0]} x {args.photo_size[1]} JPEG, one per request; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs\n"
    )
    slow = args.slow_headers or args.slow_bodies
    print("| clients | requests | requests/s | p50 ms | p95 ms | errors | mean batch | server peak RSS MiB |"
          + (" slow sockets: headers + bodies |" if slow else ""))  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if slow else ""))
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['errors']} "
            f"| {r['mean_batch']:.1f} | {r['rss']:.0f} |" + (f" {r['slow']} |" if slow else "")
        )
    for r in rows:
        if r["errors"]:
            print(f"\n{r['clients']} clients, slow sockets {r['slow']}: first error: {r['first_error']}")


if __name__ == "__main__":
    main()
