"""What the bench scripts share: the median wall time of several runs (each script runs alone, from bench/)."""

import statistics
import time


def median_time(function, repeats: int) -> float:
    """The median of `repeats` wall times of `function()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
