"""`medseg serve` over loopback: box round trip vs local compute, 8 concurrent clients, a CT upload.

    python benchmarks/bench_server.py [--boxes 50] [--clients 8] [--repeats 20] [--device cpu] [--threads 1]

Starts `medseg serve` in its own process on 127.0.0.1 (a free port, a temporary MEDSEG_HOME and token) with
LiteMedSAM (bundled weights) preloaded, then prints:
- a box on a cached 512^2 slice: client round trip (request, prediction, changed region back) against the
  same prediction computed here with a warm predictor (target: round trip <= local + 15 ms);
- CLIENTS clients x BOXES boxes each at once, one session each: errors, p50/p95 latency, the server's memory
  with the sessions open and after they are closed;
- the upload of a 512x512x300 int16 CT (synthetic: air, a body of soft tissue with noise, bone), zlib and
  raw (target <= 1.5 s).
Prints the load average: other users of a shared machine inflate every wall time. ``--threads`` sets torch's
CPU threads here and in the server alike (on a shared 2-core machine, 1 avoids oversubscription).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BOX = (150, 170, 330, 350)


def slice_512() -> np.ndarray:
    from skimage import data

    return (data.camera().astype(np.int16) * 4 - 500).astype(np.int16)  # 512x512, CT-like values


def ct_volume(depth: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:512, :512]
    body = ((rows - 256) / 200) ** 2 + ((cols - 256) / 240) ** 2 <= 1
    bone = ((rows - 330) / 30) ** 2 + ((cols - 256) / 35) ** 2 <= 1
    volume = np.full((depth, 512, 512), -1000, np.int16)
    for z in range(depth):
        plane = volume[z]
        plane[body] = (40 + rng.normal(0, 12, body.sum())).astype(np.int16)
        plane[bone] = 700 + z % 50
    return volume


def percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def start_server(home: Path, device: str, threads: int) -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token_file = home / "token"
    env = {**os.environ, "MEDSEG_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen([sys.executable, "-m", "napari_medseg.cli", "serve", "--port", str(port),
                                "--token-file", str(token_file), "--devices", device, "--preload", "lite-medsam",
                                "--max-sessions", "32"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise SystemExit("medseg serve did not start")
    return process, f"http://127.0.0.1:{port}", token_file.read_text().strip()


def wait_warm(client) -> None:
    deadline = time.monotonic() + 300
    while not client.status()["models"]:
        if time.monotonic() > deadline:
            raise SystemExit("the model did not load")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, here and in the server")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    import psutil

    from napari_medseg.server.client import Client

    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        process, url, token = start_server(Path(tmp), args.device, args.threads)
        try:
            client = Client(url, token=token)
            wait_warm(client)
            server_memory = psutil.Process(process.pid)
            image = slice_512()

            # ---- box round trip on a cached slice vs local compute
            with client.open(image) as session:
                session.box(BOX, write=False)  # embeds the slice once
                trips = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    session.box(BOX, write=False)
                    trips.append(time.perf_counter() - start)
            local = local_box_times(image, args.repeats, args.device)
            print(f"box on a cached 512^2 slice: round trip median {percentile(trips, 50):.1f} ms "
                  f"(p95 {percentile(trips, 95):.1f}), local compute median {percentile(local, 50):.1f} ms "
                  f"(p95 {percentile(local, 95):.1f}): overhead {percentile(trips, 50) - percentile(local, 50):+.1f} ms "
                  f"(target <= +15 ms)")

            # ---- concurrent clients
            latencies, errors = [], []
            sessions = [client.open(image) for _ in range(args.clients)]
            rss_open = server_memory.memory_info().rss

            def run(session, seed):
                rng = np.random.default_rng(seed)
                for _ in range(args.boxes):
                    jitter = rng.integers(-4, 5, 4)
                    start = time.perf_counter()
                    try:
                        session.box(np.add(BOX, jitter), write=True)
                    except Exception as exc:  # noqa: BLE001 - counted and printed
                        errors.append(f"{type(exc).__name__}: {exc}")
                    latencies.append(time.perf_counter() - start)

            threads = [threading.Thread(target=run, args=(s, i)) for i, s in enumerate(sessions)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            for session in sessions:
                session.close()
            time.sleep(0.5)
            print(f"{args.clients} clients x {args.boxes} boxes: {len(latencies)} requests, {len(errors)} errors, "
                  f"p50 {percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
                  f"{len(latencies) / wall:.1f} boxes/s; server memory {rss_open / 2**20:.0f} MiB with the sessions "
                  f"open, {server_memory.memory_info().rss / 2**20:.0f} MiB after closing; sessions left: "
                  f"{client.status()['sessions']}")
            for message in sorted(set(errors))[:5]:
                print(f"  error: {message}")

            # ---- CT upload
            volume = ct_volume(args.depth)
            for compression in ("zlib", "none"):
                uploader = Client(url, token=token, compression=compression)
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    session = uploader.open(volume)
                    times.append(time.perf_counter() - start)
                    session.close()
                print(f"upload of a 512x512x{args.depth} int16 CT ({volume.nbytes / 2**20:.0f} MiB), {compression}: "
                      f"median {statistics.median(times):.2f} s, best {min(times):.2f} s (target <= 1.5 s)")
        finally:
            process.kill()
            process.wait()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def local_box_times(image: np.ndarray, repeats: int, device: str) -> list[float]:
    """The same box computed here (segment()'s plane path) with a warm predictor on a cached slice."""
    from napari_medseg.inference.box2d import BoxPredictor
    from napari_medseg.inference.intensity import display_limits
    from napari_medseg.models.load import load_model
    from napari_medseg.segmentation import as_image, plane_mask

    img = as_image(image)
    loaded = load_model("lite-medsam", device=device)
    predictor = BoxPredictor(loaded, device=loaded.info.get("device"))
    limits = display_limits(img.array, img.intensity)
    plane_mask(predictor, img, None, None, limits, BOX)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plane_mask(predictor, img, None, None, limits, BOX)
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
