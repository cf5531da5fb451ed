"""A training-curve PNG with no plotting library: loss per step (blue) and eval points (red) drawn into an
RGB raster and written with zlib (PNG is a zlib-compressed scanline stream plus three chunks)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

W, H, PAD = 480, 240, 24


def _png(pixels: list[bytearray]) -> bytes:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def training_curve(section: dict, path: str | Path) -> Path | None:
    """Draw ``section["loss_history"]`` ([step, loss] pairs) and eval metrics; None when there is no history."""
    points = section.get("loss_history") or []
    if len(points) < 2:
        return None
    pixels = [bytearray(b"\xff" * (W * 3)) for _ in range(H)]

    def put(x, y, rgb):
        if 0 <= x < W and 0 <= y < H:
            pixels[y][3 * x:3 * x + 3] = bytes(rgb)

    for x in range(PAD, W - PAD):  # axes
        put(x, H - PAD, (0, 0, 0))
    for y in range(PAD, H - PAD + 1):
        put(PAD, y, (0, 0, 0))
    steps = [s for s, _ in points]
    losses = [v for _, v in points]
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0

    def xy(step, value, vmin=lo, vspan=span):
        x = PAD + round((step - steps[0]) / max(1, steps[-1] - steps[0]) * (W - 2 * PAD - 1))
        y = H - PAD - round((value - vmin) / vspan * (H - 2 * PAD - 1))
        return x, y

    prev = None
    for step, value in points:
        cur = xy(step, value)
        if prev is not None:  # straight segment between consecutive points
            n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
            for i in range(n + 1):
                put(prev[0] + round((cur[0] - prev[0]) * i / n), prev[1] + round((cur[1] - prev[1]) * i / n), (31, 119, 180))
        prev = cur
    evals = [(e["step"], v) for e in section.get("eval_history") or [] for k, v in e.items()
             if k in ("accuracy", "perplexity") and isinstance(v, (int, float))]
    if evals:
        vals = [v for _, v in evals]
        vmin, vspan = min(vals), (max(vals) - min(vals)) or 1.0
        for step, value in evals:
            x, y = xy(step, value, vmin, vspan)
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    put(x + dx, y + dy, (214, 39, 40))
    Path(path).write_bytes(_png(pixels))
    return Path(path)
