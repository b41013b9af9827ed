"""Cut inputs into minibatches of rows and join the outputs back.

Supported containers: NumPy arrays (any ndim, object arrays too), lists and
tuples (tuples come back as lists), pandas DataFrame and Series (index and
columns kept), SciPy sparse matrices and sparse arrays, torch tensors, and any
other iterable (read lazily, minibatches are lists). pandas and torch are
optional and never imported here: their objects are recognised through
``sys.modules``, since a user holding a DataFrame or a tensor has imported them.

One module over ~400 lines, on purpose: every function here is a dispatch
on the same list of container kinds (cut, count, pad, slice, join), and a
new kind is added by reading them side by side.
"""

from __future__ import annotations

import itertools
import math
import mmap
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np


def _issparse(data: Any) -> bool:
    """Whether ``data`` is a SciPy sparse matrix or array (only when SciPy is imported: workers stay lean)."""
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and bool(sp.issparse(data))


_SPARSE_ROW_FORMATS = ("csr", "csc")


def _is_tensor(data: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(data, torch.Tensor)


def _is_frame(data: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(data, pd.DataFrame)


def _is_series(data: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(data, pd.Series)


def _is_pandas(data: Any) -> bool:
    return _is_frame(data) or _is_series(data)


def is_sequence(data: Any) -> bool:
    """Tell whether ``data`` has a length and native row slicing.

    True for ndarrays, lists, tuples, DataFrames, Series, sparse matrices and
    arrays, and torch tensors; False for generators and other iterables.

    Examples
    --------
    >>> is_sequence([1, 2]), is_sequence(i for i in range(2))
    (True, False)
    """
    return (
        isinstance(data, (np.ndarray, list, tuple))
        or _is_pandas(data)
        or _issparse(data)
        or _is_tensor(data)
    )


def as_rows(data: Any) -> Any:
    """Return ``data``, or ``numpy.asarray(data)`` for a bare array-like.

    An object that is not a sequence (see `is_sequence`) but exposes
    ``__array__`` (an xarray or polars object, scikit-learn's ``_NotAnArray``)
    has no native row slicing, and iterating it may not give its rows: it is
    read as an ndarray, as a scikit-learn estimator would read it.

    Examples
    --------
    >>> class ArrayLike:
    ...     def __array__(self, dtype=None, copy=None):
    ...         return np.arange(3)
    >>> as_rows(ArrayLike())
    array([0, 1, 2])
    """
    if not is_sequence(data) and hasattr(data, "__array__"):
        return np.asarray(data)
    return data


def num_rows(data: Any) -> int:
    """Return the number of rows (items along the first axis) of ``data``.

    Raises
    ------
    TypeError
        When ``data`` has no length (a generator, a 0-d array or a scalar).

    Examples
    --------
    >>> num_rows(np.zeros((3, 2)))
    3
    """
    if isinstance(data, np.ndarray) or _issparse(data) or _is_tensor(data):
        if len(data.shape) == 0:
            raise TypeError(f"A 0-d {type(data).__name__} has no rows.")
        return int(data.shape[0])
    try:
        return len(data)
    except TypeError:
        raise TypeError(f"Cannot count the rows of a {type(data).__name__}.") from None


def slice_rows(data: Any, start: int, stop: int) -> Any:
    """Return rows ``[start, stop)`` of ``data``, in the same kind of container.

    DataFrames and Series are cut by position (``.iloc``), keeping their index.
    Tuples give lists. Sparse CSR and CSC keep their format; other sparse
    formats (COO, LIL, DOK, DIA, BSR) are converted to CSR.

    Raises
    ------
    TypeError
        When ``data`` is not a sequence (see `is_sequence`).

    Examples
    --------
    >>> slice_rows((1, 2, 3), 1, 3)
    [2, 3]
    """
    if isinstance(data, (np.ndarray, list)):
        return data[start:stop]
    if _is_pandas(data):
        return data.iloc[start:stop]
    if isinstance(data, tuple):
        return list(data[start:stop])
    if _issparse(data) and data.format not in _SPARSE_ROW_FORMATS:
        data = data.tocsr()
    if not is_sequence(data):
        raise TypeError(f"Cannot slice rows of a {type(data).__name__}; iterate it instead.")
    return data[start:stop]


def iter_row_batches(data: Any, batch_size: int) -> Iterator[Any]:
    """Yield consecutive minibatches of ``batch_size`` rows; the last may be short.

    Sequences are cut with `slice_rows`. Other iterables are read lazily, one
    minibatch at a time, into lists: the whole iterable is never materialised.

    Examples
    --------
    >>> list(iter_row_batches(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1. Got {batch_size!r} instead.")
    if is_sequence(data):
        fmt = data.format if _issparse(data) else None
        if fmt is not None and fmt != "csr":
            data = data.tocsr()  # once, so that each row slice is cheap
        for start in range(0, num_rows(data), batch_size):
            batch = slice_rows(data, start, start + batch_size)
            yield batch.asformat(fmt) if fmt in _SPARSE_ROW_FORMATS else batch
        return
    iterator = iter(data)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch


def _pad_index(index: Any, n_pad: int) -> Any:
    # Labels that cannot clash with real ones: an integer index goes on past its
    # maximum; any other index gets missing labels (NaN, NaT or None).
    pd = sys.modules["pandas"]
    if pd.api.types.is_integer_dtype(index.dtype) or len(index) == 0:
        first = int(index.max()) + 1 if len(index) else 0
        return pd.RangeIndex(first, first + n_pad)
    return index.append(pd.Index([None] * n_pad))[len(index) :]


def pad_rows(batch: Any, n_pad: int, value: Any) -> Any:
    """Append ``n_pad`` rows equal to ``value`` to ``batch``.

    ``value`` is broadcast to the shape of one row (ndarrays, tensors, sparse);
    for a DataFrame it may be a scalar, a mapping of column to value or one
    value per column. NumPy and torch promote the dtype only when ``value``
    needs it (NaN padding an int array gives floats).

    Examples
    --------
    >>> pad_rows(np.array([1, 2]), 2, 0)
    array([1, 2, 0, 0])
    """
    if n_pad <= 0:
        return list(batch) if isinstance(batch, tuple) else batch
    if isinstance(batch, np.ndarray):
        row_shape = batch.shape[1:]
        if batch.dtype == object:
            pad = np.empty((n_pad, *row_shape), dtype=object)
            if row_shape:
                pad[...] = value  # broadcast the value over each row
            else:
                pad.fill(value)  # each item is ``value`` itself, even a list
        else:
            fill = value if np.isscalar(value) else np.asarray(value)
            pad = np.empty((n_pad, *row_shape), dtype=np.result_type(batch.dtype, fill))
            pad[...] = fill
        return np.concatenate([batch, pad])
    if isinstance(batch, (list, tuple)):
        return [*batch, *([value] * n_pad)]
    if _is_series(batch):
        pd = sys.modules["pandas"]
        pad_s = pd.Series([value] * n_pad, index=_pad_index(batch.index, n_pad), name=batch.name)
        return pd.concat([batch, pad_s])
    if _is_frame(batch):
        pd = sys.modules["pandas"]
        if np.isscalar(value) or value is None:
            row: Any = [value] * batch.shape[1]
        else:
            row = dict(value) if isinstance(value, dict) or _is_series(value) else list(value)
        index = _pad_index(batch.index, n_pad)
        pad_df = pd.DataFrame([row] * n_pad, index=index, columns=batch.columns)
        return pd.concat([batch, pad_df])
    if _issparse(batch):
        sp = sys.modules["scipy.sparse"]
        dense = np.broadcast_to(np.asarray(value, dtype=batch.dtype), (n_pad, batch.shape[1]))
        pad_sp = sp.csr_array(dense) if isinstance(batch, sp.sparray) else sp.csr_matrix(dense)
        return sp.vstack([batch, pad_sp], format=batch.format)
    if _is_tensor(batch):
        torch = sys.modules["torch"]
        fill_t = torch.as_tensor(value, device=batch.device)
        dtype = torch.result_type(batch, fill_t)
        pad_t = fill_t.to(dtype).expand((n_pad, *batch.shape[1:]))
        return torch.cat([batch.to(dtype), pad_t])
    raise TypeError(f"Cannot pad a minibatch of type {type(batch).__name__}.")


def _items(part: Any) -> list[Any]:
    """Return the rows of ``part`` as a list (DataFrame rows as Series)."""
    if _is_frame(part):
        return [row for _, row in part.iterrows()]
    if _issparse(part):
        csr = part.tocsr()
        return [csr[i : i + 1] for i in range(csr.shape[0])]
    try:
        return list(part)
    except TypeError:
        raise TypeError(f"A minibatch output of type {type(part).__name__} has no rows.") from None


def concat_rows(parts: list[Any]) -> Any:
    """Join per-minibatch outputs along the first axis.

    The result has the type one sequential call would have given: ndarrays are
    concatenated, lists and tuples give one list, DataFrames and Series are
    joined by ``pd.concat`` (index kept as it is), sparse parts are stacked in
    the format of the first part, tensors by ``torch.cat``. Parts of mixed or
    other types give a list of all their items. No parts give ``[]``.

    Examples
    --------
    >>> concat_rows([np.array([1, 2]), np.array([3])])
    array([1, 2, 3])
    >>> concat_rows([(1, 2), [3]])
    [1, 2, 3]
    """
    if not parts:
        return []
    first = parts[0]
    if all(isinstance(p, (list, tuple)) for p in parts):
        return list(itertools.chain.from_iterable(parts))
    same_type = all(type(p) is type(first) for p in parts)
    if same_type and isinstance(first, np.ndarray) and first.ndim > 0:
        return first if len(parts) == 1 else _concatenate(parts)
    if same_type and _is_pandas(first):
        return first if len(parts) == 1 else sys.modules["pandas"].concat(parts)
    if all(_issparse(p) for p in parts):
        return first if len(parts) == 1 else sys.modules["scipy.sparse"].vstack(parts, format=first.format)
    if all(_is_tensor(p) for p in parts) and first.ndim > 0:
        return first if len(parts) == 1 else sys.modules["torch"].cat(parts)
    return list(itertools.chain.from_iterable(_items(p) for p in parts))


def _concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """``numpy.concatenate(parts)``; into an `empty_rows_array` when it is large and every part has one dtype and row shape."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    large = first.dtype.itemsize * math.prod(first.shape[1:]) * rows >= PLAIN_PAGES_BYTES
    if large and all(p.dtype == first.dtype and p.shape[1:] == first.shape[1:] for p in parts):
        return np.concatenate(parts, out=empty_rows_array((rows, *first.shape[1:]), first.dtype))
    return np.concatenate(parts)


def empty_rows(data: Any) -> Any:
    """Return an empty output for an empty input: zero rows of the same type.

    Examples
    --------
    >>> empty_rows(np.zeros((0, 3))).shape, empty_rows(iter([]))
    ((0, 3), [])
    """
    return slice_rows(data, 0, 0) if is_sequence(data) else []


def _pandas_columns(outputs: list[Any], names: list[str]) -> Any:
    frames = [
        o.to_frame(name if o.name is None else o.name) if _is_series(o) else o
        for o, name in zip(outputs, names)
    ]
    seen = [set(f.columns) for f in frames]
    dupes = {c for i, s in enumerate(seen) for c in s if any(c in t for t in seen[i + 1 :])}
    index = frames[0].index
    frames = [
        f.set_axis(index, axis=0).rename(
            columns={c: f"{name}__{c}" for c in dupes & set(f.columns)}
        )
        for f, name in zip(frames, names)
    ]
    return sys.modules["pandas"].concat(frames, axis=1)


def join_columns(outputs: list[Any], names: list[str]) -> Any:
    """Join the branch outputs of one minibatch side by side, in branch order.

    - any sparse output: ``scipy.sparse.hstack`` in CSR (dense outputs too);
    - all DataFrames/Series: ``pd.concat(axis=1)`` on the first branch's index
      (rows are matched by position). A Series becomes a column named by the
      Series name, or by its branch name when unnamed. A column name found in
      more than one branch is renamed ``f"{branch}__{column}"`` in every branch
      that has it; unique names are kept;
    - all ndarrays (pandas mixed in are converted): joined along the last axis;
      1-D outputs become one column each (``np.column_stack`` semantics), so
      2-D outputs give ``np.hstack`` as scikit-learn's ``FeatureUnion`` does;
    - all torch tensors: ``torch.cat`` along the last dim, 1-D as columns;
    - anything else (lists, mixed types): a list of tuples, item ``i`` being
      ``(out_0[i], out_1[i], ...)``.

    Raises
    ------
    ValueError
        When the branches return different numbers of rows, naming them.

    Examples
    --------
    >>> join_columns([np.ones((2, 2)), np.zeros(2)], ["a", "b"])
    array([[1., 1., 0.],
           [1., 1., 0.]])
    >>> join_columns([[1, 2], ["x", "y"]], ["a", "b"])
    [(1, 'x'), (2, 'y')]
    """
    if len(outputs) != len(names) or not outputs:
        raise ValueError(f"Expected one output per branch, got {len(outputs)} for {names}.")
    counts = [num_rows(o) for o in outputs]
    if len(set(counts)) > 1:
        detail = ", ".join(f"{name!r}: {n} rows" for name, n in zip(names, counts))
        raise ValueError(f"Union branches returned different numbers of rows ({detail}).")
    if any(_issparse(o) for o in outputs):
        sp = sys.modules["scipy.sparse"]
        blocks = [
            o if _issparse(o) or np.ndim(o) != 1 else np.asarray(o).reshape(-1, 1)
            for o in outputs
        ]
        return sp.hstack(blocks, format="csr")
    if all(_is_pandas(o) for o in outputs):
        return _pandas_columns(outputs, names)
    if all(isinstance(o, np.ndarray) or _is_pandas(o) for o in outputs):
        arrays = [np.asarray(o) for o in outputs]
        arrays = [a.reshape(-1, 1) if a.ndim == 1 else a for a in arrays]
        if len({a.ndim for a in arrays}) > 1:
            shapes = ", ".join(f"{name!r}: {a.shape}" for name, a in zip(names, arrays))
            raise ValueError(f"Cannot join union branch outputs of different ndim ({shapes}).")
        return np.concatenate(arrays, axis=-1)
    if all(_is_tensor(o) for o in outputs):
        torch = sys.modules["torch"]
        return torch.cat([o.unsqueeze(-1) if o.ndim == 1 else o for o in outputs], dim=-1)
    return list(zip(*(_items(o) for o in outputs)))


def check_same_length(n_in: int, output: Any, step_name: str) -> None:
    """Raise when a step returned another number of rows than it was given.

    Raises
    ------
    ValueError
        When ``num_rows(output) != n_in``.

    Examples
    --------
    >>> check_same_length(4, [1, 2, 3], "scale")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Step 'scale' returned 3 rows for a minibatch of 4 rows; ...
    """
    n_out = num_rows(output)
    if n_out != n_in:
        raise ValueError(
            f"Step {step_name!r} returned {n_out} rows for a minibatch of {n_in} rows; "
            "a step in a queued pipeline must return one row per input row (a step that "
            "filters rows must set the class attribute `may_change_length = True`)."
        )


#: Arrays from this size on are kept off transparent huge pages (see `empty_rows_array`):
#: the size from which NumPy asks for them.
PLAIN_PAGES_BYTES = 1 << 22


def empty_rows_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """``numpy.empty(shape, dtype)`` for a joined output, kept off transparent huge pages.

    NumPy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``)
    for any array of 4 MiB or more. A joined output is filled a minibatch at
    a time, and each first write to a huge page makes the kernel find and
    zero 2 MiB at once: where free memory is cold (a virtual machine that
    hands free pages back to its host), that costs up to about 2 s of system
    time per GB, in the caller's thread, against 0.3-0.5 s with small pages,
    and it varies with what ran before. So the array's pages are
    advised ``MADV_NOHUGEPAGE`` before any is touched: the advice is on the
    array's address range, NumPy's own switch is left alone. (An array
    below the C library's mmap threshold, 32 MiB at most, lies in the heap,
    whose range a later allocation may reuse with the advice still on it;
    larger ones are mappings of their own, gone when they are freed.) The array is
    the one ``numpy.empty`` made (it owns its data); where the C library
    cannot be called, or the advice is unknown (not Linux), it is left as
    NumPy made it.

    Examples
    --------
    >>> out = empty_rows_array((1024, 1024, 2), np.dtype(np.float32))
    >>> type(out), out.shape, out.dtype, out.flags.owndata
    (<class 'numpy.ndarray'>, (1024, 1024, 2), dtype('float32'), True)
    """
    out = np.empty(shape, dtype=dtype)
    option = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if out.nbytes < PLAIN_PAGES_BYTES or dtype.hasobject or option is None:
        return out  # (an object array's pages are written already: None in every item)
    from ._libc import function  # here: this module stands alone until an output is large

    advise = function("madvise", "int", ("void_p", "size_t", "int"))
    if advise is not None:
        address = out.__array_interface__["data"][0]
        page = mmap.PAGESIZE
        first, end = -(-address // page) * page, (address + out.nbytes) // page * page
        if end > first:
            advise(first, end - first, option)  # a hint: its failure changes nothing
    return out


class RowAccumulator:
    """Joins minibatch outputs along axis 0 as they arrive.

    When every output is an ndarray of one dtype and row shape and the total
    number of rows is known, each minibatch is copied into one preallocated
    array as it arrives: no serial concatenation at the end, and no second
    copy of the whole output in memory. Anything else is kept and joined by
    :func:`concat_rows` at the end. Where that array lives, and how a part
    gets into it, are the two methods a subclass may change
    (:class:`~neuraxle_stream.shared_rows.SharedRowAccumulator`: in shared
    memory, written by the workers).

    Examples
    --------
    >>> acc = RowAccumulator(total_rows=4)
    >>> acc.add(np.array([1, 2])); acc.add(np.array([3, 4]))
    >>> acc.result()
    array([1, 2, 3, 4])
    """

    def __init__(self, total_rows: int | None) -> None:
        self._total = total_rows
        self._parts: list[Any] = []
        self._out: np.ndarray | None = None
        self._filled = 0

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """The array that the outputs are copied into (see :func:`empty_rows_array`)."""
        return empty_rows_array(shape, dtype)

    def _write(self, out: np.ndarray, start: int, part: np.ndarray) -> bool:
        """Copy ``part`` into rows ``start:`` of ``out``; ``False`` when it could not."""
        out[start : start + part.shape[0]] = part
        return True

    def add(self, part: Any) -> None:
        """Take the output of the next minibatch, in input order."""
        out = self._out
        total = self._total
        first = out is None and not self._parts and total is not None
        if first and total is not None and type(part) is np.ndarray and part.ndim >= 1 and part.shape[0] <= total:
            out = self._out = self._allocate((total, *part.shape[1:]), part.dtype)
        if out is not None:
            fits = (
                type(part) is np.ndarray
                and part.dtype == out.dtype
                and part.shape[1:] == out.shape[1:]
                and self._filled + part.shape[0] <= out.shape[0]
            )
            if fits and self._write(out, self._filled, part):
                self._filled += part.shape[0]
                return
            # Not the expected shape after all: fall back to joining the parts.
            self._parts = [out[: self._filled]] if self._filled else []
            self._out = None
        self._parts.append(part)

    def result(self) -> Any:
        """The joined output (``[]`` when nothing was added)."""
        if self._out is not None:
            return self._out if self._filled == self._out.shape[0] else self._out[: self._filled]
        return concat_rows(self._parts)
