"""Benchmark: how long image normalization takes (decode, orient, RGB, resize to 896, JPEG q90).

Inputs are generated with pillow/numpy (nothing is downloaded):
- photo: 4000x3000 JPEG q90 with smooth structure plus sensor-like noise, about the size of a
  12 MP phone photo (the issue's target: <= 150 ms p50);
- noise: 4000x3000 JPEG of pure noise, the worst case for a JPEG decoder;
- png: a 4000x3000 PNG graphic (smooth, no noise: what PNG is used for; no draft decoding);
- small: an 800x600 JPEG (no resize needed);
- data-url: `load_image` on the photo as a data: URL (base64 decode + worker thread hop).

Run: .venv/bin/python benchmarks/bench_images.py [--runs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from guard_engine.images import load_image, normalize_image


def photo_like(width: int, height: int, seed: int = 7, noise: float = 6.0) -> Image.Image:
    """Smooth large-scale colour regions plus mild per-pixel noise, like a real photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100, 3), np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    noisy = smooth + rng.normal(0.0, noise, smooth.shape).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def measure(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def row(name: str, size: int, times: list[float]) -> str:
    times = sorted(times)
    q = statistics.quantiles(times, n=100, method="inclusive")
    return (
        f"| {name} | {size / 1e6:.2f} MB | {len(times)} | {q[49]:.1f} | {q[89]:.1f} | "
        f"{q[98]:.1f} | {times[-1]:.1f} |"
    )


def main() -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    photo = photo_like(4000, 3000)
    inputs = {
        "photo 4000x3000 JPEG": encode(photo, "JPEG", quality=90),
        "noise 4000x3000 JPEG": encode(
            Image.fromarray(np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), np.uint8)),
            "JPEG",
            quality=90,
        ),
        "graphic 4000x3000 PNG": encode(photo_like(4000, 3000, noise=0.0), "PNG"),
        "small 800x600 JPEG": encode(photo.resize((800, 600)), "JPEG", quality=90),
    }
    print("| input | bytes | runs | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    # The slow worst cases get a fifth of the runs so the whole script stays around a minute.
    slow = {"noise 4000x3000 JPEG", "graphic 4000x3000 PNG"}
    for name, data in inputs.items():

        def once(d: bytes = data) -> None:
            normalize_image(d, param="bench")

        runs = max(10, args.runs // 5) if name in slow else args.runs
        print(row(f"normalize_image, {name}", len(data), measure(once, runs, args.warmup)))

    jpeg = inputs["photo 4000x3000 JPEG"]
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")

    async def via_load_image() -> list[float]:
        times = []
        for i in range(args.runs + args.warmup):
            start = time.perf_counter()
            await load_image(url, param="bench", fetcher=None)
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1000.0)
        return times

    print(row("load_image, photo JPEG as data: URL", len(url), asyncio.run(via_load_image())))


if __name__ == "__main__":
    main()
