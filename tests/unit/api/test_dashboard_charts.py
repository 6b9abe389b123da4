"""Server-drawn charts: round axis steps, points inside the plot, one line per series."""

from envoi.api.dashboard.charts import line_chart, nice_ceiling


def test_round_ceilings():
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 260, 999)] == [1, 1, 5, 10, 20, 500, 1000]


def test_points_stay_in_the_plot_and_the_axis_covers_the_top_value():
    chart = line_chart("Sending", ["a", "b", "c"], {"Accepted": [0, 37, 12], "Failed": [1, 0, 0]})
    left, top, right, bottom = chart.plot
    assert [s.name for s in chart.series] == ["Accepted", "Failed"] and chart.series[0].total == 49
    for series in chart.series:
        for point in series.points.split():
            x, y = map(float, point.split(","))
            assert left <= x <= right and top <= y <= bottom
    labels = [label for _, label in chart.y_ticks]
    assert labels == ["0", "10", "20", "30", "40"]  # 37 fits under the top tick, in round steps
    peak = min(float(p.split(",")[1]) for p in chart.series[0].points.split())
    assert peak > top  # 37 < 40: below the top line


def test_an_empty_range_still_draws_an_axis():
    chart = line_chart("Engagement", [], {"Opened": []})
    assert [label for _, label in chart.y_ticks] == ["0", "1", "2", "3", "4"]
