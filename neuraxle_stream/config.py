"""The library's settings: :func:`get_config`, :func:`set_config`, :func:`config_context`.

As scikit-learn's ``sklearn/_config.py``: a global default, and a
thread-local copy of it that :func:`set_config` and :func:`config_context`
change, so that a ``config_context`` in one thread does not reach another.

Keys
----
worker_idle_timeout : float, default=30.0
    Seconds an idle process worker stays warm in the pool after a call
    (see :mod:`~neuraxle_stream.pool`); ``0`` stops the workers at the end of
    each call.

This module imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["config_context", "get_config", "set_config"]

_global_config: dict[str, Any] = {"worker_idle_timeout": 30.0}
_local = threading.local()


def _thread_config() -> dict[str, Any]:
    config: dict[str, Any] | None = getattr(_local, "config", None)
    if config is None:
        config = _local.config = dict(_global_config)
    return config


def get_config() -> dict[str, Any]:
    """The current settings of this thread (a copy).

    Returns
    -------
    dict
        ``{"worker_idle_timeout": ...}``.

    Examples
    --------
    >>> from neuraxle_stream import get_config
    >>> get_config()["worker_idle_timeout"]
    30.0
    """
    return dict(_thread_config())


def _check(worker_idle_timeout: float) -> float:
    if isinstance(worker_idle_timeout, bool) or not isinstance(worker_idle_timeout, (int, float)) or not (
        worker_idle_timeout >= 0
    ):
        # InvalidParameterError lives above this leaf module's layer: imported here only
        from .exceptions import InvalidParameterError

        raise InvalidParameterError(
            "The 'worker_idle_timeout' parameter of set_config must be a float in [0, inf]. "
            f"Got {worker_idle_timeout!r} instead."
        )
    return float(worker_idle_timeout)


def set_config(worker_idle_timeout: float | None = None) -> None:
    """Change settings for this thread (other threads start from the defaults, as in scikit-learn).

    Parameters
    ----------
    worker_idle_timeout : float, default=None
        Seconds idle process workers stay warm after a call; ``0`` stops them
        at the end of each call. ``None`` leaves the setting as it is.

    Raises
    ------
    InvalidParameterError
        For a negative or non-numeric ``worker_idle_timeout``.

    Examples
    --------
    >>> from neuraxle_stream import get_config, set_config
    >>> set_config(worker_idle_timeout=5)
    >>> get_config()["worker_idle_timeout"]
    5.0
    >>> set_config(worker_idle_timeout=30)
    """
    config = _thread_config()
    if worker_idle_timeout is not None:
        config["worker_idle_timeout"] = _check(worker_idle_timeout)


@contextlib.contextmanager
def config_context(*, worker_idle_timeout: float | None = None) -> Iterator[None]:
    """Change settings inside a ``with`` block of this thread, restored after.

    Parameters
    ----------
    worker_idle_timeout : float, default=None
        As in :func:`set_config`.

    Examples
    --------
    >>> from neuraxle_stream import config_context, get_config
    >>> with config_context(worker_idle_timeout=0):
    ...     get_config()["worker_idle_timeout"]
    0.0
    >>> get_config()["worker_idle_timeout"]
    30.0
    """
    config = _thread_config()
    old = dict(config)
    if worker_idle_timeout is not None:
        config["worker_idle_timeout"] = _check(worker_idle_timeout)
    try:
        yield
    finally:
        config.clear()
        config.update(old)
