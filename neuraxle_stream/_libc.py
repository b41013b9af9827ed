"""The C library's functions that neither NumPy nor the standard library offer, typed, through ``ctypes``.

``mmap``/``munmap`` of a file without keeping its descriptor
(:mod:`~neuraxle_stream.shared_rows`), ``madvise`` on an array's pages
(:func:`~neuraxle_stream._containers.empty_rows_array`), glibc's ``mallopt``
in worker processes (:mod:`~neuraxle_stream.workers`). They come from one
instance of the C library of our own, so that the types set on its
functions are ours alone, made with ``use_errno`` so that
``ctypes.get_errno()`` reads what a call left. ``ctypes`` is imported by the
first caller only. A function that cannot be had (no ``ctypes``, no C
library to load, not glibc) is ``None``: each caller then does without.

>>> function("no_such_function_in_any_libc", "int", ()) is None
True
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["function"]


@functools.cache
def _library() -> Any | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):  # no ctypes, or no C library to load
        return None


@functools.cache
def function(name: str, restype: str, argtypes: tuple[str, ...]) -> Any | None:
    """The C library's function ``name``, typed; ``None`` where it cannot be had.

    Types are named as ``ctypes`` names them without ``c_`` (``"int"``,
    ``"void_p"``, ``"size_t"``, ``"long"``). Asked again with the same
    arguments, the same function comes back.
    """
    library = _library()
    if library is None:
        return None
    import ctypes

    try:
        func = getattr(library, name)
        func.restype = getattr(ctypes, "c_" + restype)
        func.argtypes = tuple(getattr(ctypes, "c_" + t) for t in argtypes)
    except (AttributeError, TypeError):  # no such function here (musl has no mallopt)
        return None
    return func
