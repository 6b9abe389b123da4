"""Line charts as geometry for an inline SVG (templates/chart.html): drawn on the server, so a chart
needs no script, no library and no network, and reads the same in every browser."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 28, 12, 28  # room for the axis labels
COLOURS = ("#1f6feb", "#1a7f37", "#cf222e", "#8250df", "#bf8700", "#57606a")  # 4.5:1 on white


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    points: str  # "x,y x,y ..." for <polyline>
    total: int


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    series: list[Series]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]  # (x, label)
    plot: tuple[int, int, int, int]   # left, top, right, bottom of the plot area


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above value (at least 1), so axis ticks are round."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def line_chart(title: str, labels: list[str], values: dict[str, list[int | None]], *,
               label_every: int | None = None) -> Chart:
    """One line per name in VALUES (each as long as LABELS), on a shared y axis from 0. A None value is
    no point (a day still to come): the line leaves it out."""
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    top = max((v for points in values.values() for v in points if v is not None), default=0)
    step = nice_ceiling(top / 4)  # four round steps up the y axis
    ceiling = step * 4
    n = max(len(labels), 1)
    span = (right - LEFT) / max(n - 1, 1)

    def x(i: int) -> float:
        return round(LEFT + i * span, 1)

    def y(v: float) -> float:
        return round(bottom - (bottom - TOP) * v / ceiling, 1)

    series = [Series(name, COLOURS[i % len(COLOURS)],
                     " ".join(f"{x(j)},{y(v)}" for j, v in enumerate(points) if v is not None),
                     sum(v for v in points if v is not None))
              for i, (name, points) in enumerate(values.items())]
    every = label_every or max(1, n // 8)
    return Chart(title, WIDTH, HEIGHT, series,
                 y_ticks=[(y(step * k), f"{step * k:,}") for k in range(5)],
                 x_ticks=[(x(i), label) for i, label in enumerate(labels) if i % every == 0],
                 plot=(LEFT, TOP, right, bottom))
