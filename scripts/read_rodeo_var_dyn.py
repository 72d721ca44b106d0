"""Read the Fashion-MNIST encoder-gradient variances off the RODEO repository's figure.

    git clone https://github.com/thjashin/rodeo && \\
        python scripts/read_rodeo_var_dyn.py rodeo/results/var_dyn.png --steps 100000 1000000

``results/var_dyn.png`` (thjashin/rodeo at cfb4427, 900×193 pixels) plots, per
dataset, the mean over encoder parameters of EMA(0.999)[g²] − EMA(0.999)[g]²
against training steps; its middle panel is Fashion-MNIST, solid lines K = 2
(RODEO, Double CV, DisARM/ARMS) and dashed red RELAX (3 evaluations). The paper
gives no table of these numbers, so docs/results.md compares with values read
here: for each step, the pixels of the three columns around its x position
whose colour is nearest each curve's (within 40 RGB units), their median row
turned into a value by the axis ticks (2.00 and 0.50 ×10⁻², 150 rows apart:
about 0.01 a row, so ±0.02). Rows below 0.8 are the K = 3 curves and are
left out. Where curves cross or spike the colours blend and a reading is
unreliable; 100,000 and 1,000,000 steps are clean.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

# Pixel geometry of the Fashion-MNIST panel in the 900×193 figure.
Y_TOP, Y_BOTTOM, V_TOP, V_BOTTOM = 14.4, 164.4, 2.0, 0.5  # rows of the 2.00 and 0.50 ticks
X_ZERO, X_200K = 297.0, 342.0  # columns of step 0 and step 200,000
CURVES = {
    "RODEO": (42, 91, 167),
    "DisARM/ARMS": (99, 159, 87),
    "Double CV": (197, 121, 62),
    "RELAX (3 evaluations)": (190, 115, 115),
}


def value(row: float) -> float:
    return V_TOP - (row - Y_TOP) / (Y_BOTTOM - Y_TOP) * (V_TOP - V_BOTTOM)


def nearest(rgb: tuple[int, int, int]) -> str | None:
    dist = {
        k: sum((a - b) ** 2 for a, b in zip(rgb, ref, strict=True)) for k, ref in CURVES.items()
    }
    best = min(dist, key=lambda k: dist[k])
    return best if dist[best] < 40**2 else None


def read(png: Path, steps: int) -> dict[str, float]:
    from PIL import Image

    image = Image.open(png).convert("RGB")
    if image.size != (900, 193):
        raise SystemExit(f"{png}: expected the 900x193 figure, got {image.size}")
    x = round(X_ZERO + (X_200K - X_ZERO) * steps / 200_000)
    found: dict[str, list[float]] = {}
    for col in (x - 1, x, x + 1):
        for row in range(10, 170):
            pixel = image.getpixel((col, row))
            assert isinstance(pixel, tuple)
            curve = nearest((pixel[0], pixel[1], pixel[2]))
            if curve is not None and value(row) > 0.8:
                found.setdefault(curve, []).append(value(row))
    return {k: statistics.median(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path, help="results/var_dyn.png of thjashin/rodeo")
    parser.add_argument("--steps", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    for steps in args.steps:
        got = read(args.png, steps)
        shown = ", ".join(f"{k} {got[k]:.2f}" for k in CURVES if k in got)
        print(f"step {steps:,}: {shown} (×10⁻², ±0.02)")


if __name__ == "__main__":
    main()
