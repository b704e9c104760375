"""facedex: open 1:N face identification at scale."""

import os

# OpenBLAS's worker threads spin for ~2^28 cycles (~0.1 s) after every product before they sleep. On a machine
# whose cores the services share, that spin takes the cores the API and the proxy need to pass the answer on:
# with 2^4 cycles the brute-force route served 25 % more requests/s at concurrency 8 (docs/benchmarks.md). OpenBLAS
# reads it once, when numpy loads it, so it is set here, before any facedex module imports numpy; a value in the
# environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
