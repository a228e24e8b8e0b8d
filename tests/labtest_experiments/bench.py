"""Experiments for benchmarks: a real mock T1 whose analysis takes 200 ms of CPU work, as a
slow fit (tomography) would."""
from __future__ import annotations

import time

import numpy as np

from experiments.single_qubit.t1 import T1Experiment


class SlowFitT1(T1Experiment):
    def analyze(self, data):
        end = time.perf_counter() + 0.2
        rng = np.random.default_rng(0)
        while time.perf_counter() < end:
            np.linalg.svd(rng.standard_normal((60, 60)))
        return super().analyze(data)
