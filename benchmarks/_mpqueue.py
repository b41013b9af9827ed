"""The processes of the ``multiprocessing.Queue`` transport baselines.

Kept apart from the rest of the suite and importing only NumPy, so that the
processes that run them start as fast as they can.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def producer(ctrl: Any, data: Any, n_floats: int) -> None:
    array = np.full(n_floats, 1.0)
    while (n := ctrl.get()) is not None:
        for _ in range(n):
            data.put(array)


def consumer(ctrl: Any, data: Any, done: Any) -> None:
    while (n := ctrl.get()) is not None:
        for _ in range(n):
            data.get()[0]
        done.put(n)


def relay(inbox: Any, outbox: Any) -> None:
    while (item := inbox.get()) is not None:
        item[0, 0]
        outbox.put(item)
    outbox.put(None)
