"""Production-like latency for the local fleet, seeded per request so replays repeat it.

Benchmarks run the local fleet (no keys, no network) but should feel the timing of the
models it stands in for: a time to first token drawn from a log-normal, then output at a
steady rate. The draw is seeded by sha256 of the request id, not Python's salted `hash()`,
so the same request gets the same figure in every process, including after a crash.
"""

from __future__ import annotations

import hashlib
import math
import random

from splitpin.schemas.governance import EmulationProfile


def request_seed(request_id: str) -> int:
    """A 64-bit seed from the request id, stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(request_id.encode("utf-8")).digest()[:8], "big")


def emulated_latency_ms(profile: EmulationProfile, request_id: str, tokens_out: int) -> float:
    """TTFT ~ LogNormal(ln median, sigma), plus tokens_out at the profile's output speed.

    Rounded to 0.001 ms so the figure serializes identically everywhere.
    """
    rng = random.Random(request_seed(request_id))
    ttft = rng.lognormvariate(math.log(profile.ttft_ms_median), profile.ttft_sigma)
    generation = max(tokens_out, 0) / profile.tokens_per_s * 1000.0
    return round(ttft + generation, 3)
