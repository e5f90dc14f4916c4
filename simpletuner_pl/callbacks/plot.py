"""A loss-vs-σ line chart drawn with PIL (matplotlib is not a dependency): one line per evaluation round.

Older rounds are drawn lighter, the latest darkest, so the chart shows where along the noise schedule the adapter
is still improving (and where it started to overfit). `plot_loss` draws the run's `loss.png` the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw

from simpletuner_pl.io import save_image

WIDTH, HEIGHT, MARGIN = 720, 440, 60
Series = Tuple[int, Sequence[float], Sequence[float]]  # (step, sigmas, losses)


def _ticks(low: float, high: float, count: int = 5) -> List[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def plot_loss_vs_sigma(series: List[Series], path: Path, title: str = "eval loss vs sigma") -> Path:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    losses = [v for _, _, ls in series for v in ls]
    low, high = min(losses), max(losses)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    x0, y0, x1, y1 = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN

    def point(sigma: float, loss: float) -> Tuple[float, float]:
        return x0 + sigma * (x1 - x0), y1 - (loss - low) / (high - low) * (y1 - y0)

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for sigma in _ticks(0.0, 1.0):
        x, _ = point(sigma, low)
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 10, y1 + 8), f"{sigma:.2f}", fill="black")
    for loss in _ticks(low, high):
        _, y = point(0.0, loss)
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 6), f"{loss:.4g}", fill="black")
    draw.text((x0, 6), title, fill="black")
    draw.text(((x0 + x1) // 2 - 20, HEIGHT - 22), "sigma (1 = noise)", fill="black")
    for i, (_step, sigmas, values) in enumerate(series):
        shade = int(200 * (1 - (i + 1) / len(series)))  # latest round darkest
        colour = (shade, shade, 255) if i == len(series) - 1 else (shade, shade, shade)
        points = [point(s, v) for s, v in sorted(zip(sigmas, values))]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    last_step = series[-1][0]
    draw.text((x1 - 170, 6), f"{len(series)} rounds, latest (blue) step {last_step}", fill=(0, 0, 200))
    return save_image(image, path)


def plot_loss(steps: Sequence[int], losses: Sequence[float], path: Path, title: str = "train/loss") -> Path:
    """`loss.png`: every logged training loss (grey) and its moving average over ~5% of the run (blue).

    A diffusion loss is dominated by the σ drawn for each step, so single values jump; the average shows the trend.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    first, last = steps[0], max(steps[-1], steps[0] + 1)
    x0, y0, x1, y1 = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN

    def point(step: float, loss: float) -> Tuple[float, float]:
        return x0 + (step - first) / (last - first) * (x1 - x0), y1 - (loss - low) / (high - low) * (y1 - y0)

    draw.rectangle((x0, y0, x1, y1), outline="black")
    for step in _ticks(first, last):
        x, _ = point(step, low)
        draw.line((x, y1, x, y1 + 4), fill="black")
        draw.text((x - 10, y1 + 8), f"{step:.0f}", fill="black")
    for loss in _ticks(low, high):
        _, y = point(first, loss)
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 6), f"{loss:.4g}", fill="black")
    draw.text((x0, 6), title, fill="black")
    draw.text(((x0 + x1) // 2 - 10, HEIGHT - 22), "step", fill="black")
    raw = [point(s, v) for s, v in zip(steps, losses)]
    if len(raw) > 1:
        draw.line(raw, fill=(190, 190, 190), width=1)
    window = max(1, len(losses) // 20)
    average = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
               for i in range(len(losses))]
    smooth = [point(s, v) for s, v in zip(steps, average)]
    if len(smooth) > 1:
        draw.line(smooth, fill=(0, 0, 220), width=2)
    for x, y in raw if len(raw) == 1 else []:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(0, 0, 220))
    label = f"{len(losses)} values, moving average of {window} (blue)" if window > 1 else f"{len(losses)} values"
    draw.text((x1 - 230, 6), label, fill=(0, 0, 200))
    return save_image(image, path)
