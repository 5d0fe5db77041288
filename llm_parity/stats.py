"""Small statistics shared by the benchmark, the report and the distribution measures, on plain
lists (compare measures whole records with numpy, the same definitions)."""
import math

# Values below 1e-12 are rounding (equal distributions give a KLD of 0, or a hair below it): one
# bin of the distributions counted by order of magnitude holds them.
FLOOR_DECADE = -12


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
