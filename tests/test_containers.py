"""Tests for neuraxle_stream._containers: minibatch cutting and joining."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from neuraxle_stream._containers import (
    PLAIN_PAGES_BYTES,
    RowAccumulator,
    check_same_length,
    concat_rows,
    empty_rows,
    empty_rows_array,
    is_sequence,
    iter_row_batches,
    join_columns,
    num_rows,
    pad_rows,
    slice_rows,
)

batch_sizes = st.integers(min_value=1, max_value=25)
numeric_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=20),
)


def round_trip(data: Any, batch_size: int) -> Any:
    return concat_rows(list(iter_row_batches(data, batch_size))) if num_rows(data) else data


class CountingGenerator:
    """An iterator that records how many items were read from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.consumed = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.consumed += 1
            yield i


# --- round trips: concat_rows(iter_row_batches(x, b)) == x ----------------------------


@given(numeric_arrays, batch_sizes)
def test_round_trip_ndarray(x: np.ndarray, batch_size: int) -> None:
    out = round_trip(x, batch_size)
    assert type(out) is np.ndarray and out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


@given(st.lists(st.one_of(st.integers(), st.text(), st.none()), max_size=40), batch_sizes)
def test_round_trip_object_ndarray_list_tuple(items: list[Any], batch_size: int) -> None:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    out = round_trip(arr, batch_size)
    assert out.dtype == object and list(out) == items
    assert round_trip(items, batch_size) == items
    assert concat_rows(list(iter_row_batches(tuple(items), batch_size))) == items


@given(st.integers(0, 30), st.integers(1, 4), batch_sizes, st.booleans())
def test_round_trip_pandas_keeps_index_and_columns(
    n: int, n_cols: int, batch_size: int, string_index: bool
) -> None:
    rng = np.random.default_rng(n)
    index = [f"r{i}" for i in rng.permutation(n)] if string_index else rng.permutation(n) * 3
    df = pd.DataFrame(rng.normal(size=(n, n_cols)), index=index, columns=list("abcd")[:n_cols])
    df["k"] = np.arange(n)
    batches = list(iter_row_batches(df, batch_size))
    assert all(type(b) is pd.DataFrame for b in batches)
    if n:
        pd.testing.assert_frame_equal(concat_rows(batches), df)
        s = df["k"].rename("k")
        pd.testing.assert_series_equal(concat_rows(list(iter_row_batches(s, batch_size))), s)


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csc_matrix, sp.csr_array, sp.csc_array])
@given(st.integers(0, 30), batch_sizes)
def test_round_trip_sparse_keeps_format(kind: Any, n: int, batch_size: int) -> None:
    x = kind(sp.random(n, 7, density=0.3, random_state=n))
    batches = list(iter_row_batches(x, batch_size))
    assert all(type(b) is type(x) for b in batches)
    out = round_trip(x, batch_size)
    assert type(out) is type(x)
    np.testing.assert_array_equal(out.toarray(), x.toarray())


@pytest.mark.parametrize("kind", [sp.coo_matrix, sp.coo_array, sp.lil_matrix, sp.dok_array])
def test_other_sparse_formats_come_back_as_csr(kind: Any) -> None:
    x = kind(sp.random(11, 5, density=0.4, random_state=0))
    batches = list(iter_row_batches(x, 4))
    assert [b.format for b in batches] == ["csr"] * 3
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    assert isinstance(batches[0], sp.sparray) == isinstance(x, sp.sparray)
    out = concat_rows(batches)
    assert out.format == "csr"
    np.testing.assert_array_equal(out.toarray(), x.toarray())
    assert slice_rows(x, 2, 5).format == "csr"


@given(st.lists(st.integers(), max_size=50), batch_sizes)
def test_round_trip_generator(items: list[int], batch_size: int) -> None:
    batches = list(iter_row_batches(iter(items), batch_size))
    assert all(type(b) is list and 0 < len(b) <= batch_size for b in batches)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert concat_rows(batches) == items


@settings(deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=20)),
    batch_sizes,
)
def test_round_trip_torch(x: np.ndarray, batch_size: int) -> None:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.nan_to_num(x))
    out = round_trip(t, batch_size)
    assert isinstance(out, torch.Tensor) and torch.equal(out, t)


def test_generators_are_read_lazily() -> None:
    source = CountingGenerator(100)
    batches = iter_row_batches(source, 8)
    assert source.consumed == 0
    assert next(batches) == list(range(8))
    assert source.consumed == 8
    assert next(batches) == list(range(8, 16))
    assert source.consumed == 16


def test_endless_iterable() -> None:
    def naturals() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    batches = iter_row_batches(naturals(), 3)
    assert [next(batches) for _ in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1\. Got 0 instead"):
        next(iter_row_batches([1, 2], 0))


# --- is_sequence, num_rows, slice_rows, empty_rows -----------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        (np.zeros((3, 2)), True),
        ([1, 2], True),
        ((1, 2), True),
        (pd.DataFrame({"a": [1]}), True),
        (pd.Series([1]), True),
        (sp.csr_matrix(np.eye(2)), True),
        (sp.coo_array(np.eye(2)), True),
        ((i for i in range(3)), False),
        (range(3), False),
        ({1: 2}, False),
    ],
)
def test_is_sequence(data: Any, expected: bool) -> None:
    assert is_sequence(data) is expected


def test_num_rows() -> None:
    assert num_rows(np.zeros((5, 2, 3))) == 5
    assert num_rows(sp.csr_array((4, 9))) == 4
    assert num_rows(pd.DataFrame({"a": range(3)})) == 3
    assert num_rows((1, 2)) == 2
    with pytest.raises(TypeError, match="Cannot count the rows of a generator"):
        num_rows(i for i in range(3))
    with pytest.raises(TypeError, match="A 0-d ndarray has no rows"):
        num_rows(np.array(1.0))


def test_slice_rows() -> None:
    assert slice_rows((1, 2, 3, 4), 1, 3) == [2, 3]
    df = pd.DataFrame({"a": range(5)}, index=list("vwxyz"))
    pd.testing.assert_frame_equal(slice_rows(df, 1, 3), df.iloc[1:3])
    assert list(slice_rows(df, 1, 3).index) == ["w", "x"]
    np.testing.assert_array_equal(slice_rows(np.arange(10).reshape(5, 2), 3, 9), [[6, 7], [8, 9]])
    assert slice_rows(sp.csc_matrix(np.eye(4)), 0, 2).format == "csc"
    with pytest.raises(TypeError, match="Cannot slice rows of a generator"):
        slice_rows((i for i in range(3)), 0, 1)


def test_empty_rows() -> None:
    assert empty_rows(np.zeros((4, 3))).shape == (0, 3)
    assert empty_rows((1, 2)) == []
    assert empty_rows(iter([1])) == []
    df = pd.DataFrame({"a": [1.0], "b": ["x"]})
    empty = empty_rows(df)
    assert list(empty.columns) == ["a", "b"] and len(empty) == 0
    assert empty_rows(sp.coo_matrix((3, 4))).shape == (0, 4)
    assert list(iter_row_batches(np.zeros((0, 3)), 4)) == []


# --- pad_rows -------------------------------------------------------------------------


def test_pad_ndarray() -> None:
    out = pad_rows(np.array([[1, 2], [3, 4]], dtype=np.int8), 2, 0)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[1, 2], [3, 4], [0, 0], [0, 0]])
    out = pad_rows(np.ones((1, 2)), 1, [7, 8])
    np.testing.assert_array_equal(out, [[1, 1], [7, 8]])
    out = pad_rows(np.array([1, 2]), 1, np.nan)
    assert out.dtype == np.float64 and np.isnan(out[-1])
    out = pad_rows(np.ones((2, 3, 4), dtype=np.float32), 3, -1)
    assert out.shape == (5, 3, 4) and out.dtype == np.float32 and (out[2:] == -1).all()


def test_pad_object_ndarray_keeps_value_whole() -> None:
    arr = np.empty(2, dtype=object)
    arr[:] = [[1], [2, 3]]
    out = pad_rows(arr, 2, [0, 0])
    assert out.shape == (4,) and out[2] == [0, 0] and out[3] == [0, 0]


def test_pad_lists_and_tuples() -> None:
    assert pad_rows([1, 2], 2, None) == [1, 2, None, None]
    assert pad_rows((1, 2), 1, 0) == [1, 2, 0]
    assert pad_rows((1, 2), 0, 0) == [1, 2]
    batch = np.ones(2)
    assert pad_rows(batch, 0, 0) is batch


def test_pad_pandas() -> None:
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}, index=[10, 4])
    out = pad_rows(df, 2, 0)
    assert list(out.index) == [10, 4, 11, 12] and list(out.columns) == ["a", "b"]
    assert out["a"].dtype == np.int64 and out.iloc[2:].eq(0).all().all()
    out = pad_rows(df, 1, {"a": 9, "b": 8.0})
    assert out.iloc[-1].tolist() == [9, 8.0]
    out = pad_rows(df, 1, [5, 6.0])
    assert out.iloc[-1].tolist() == [5, 6.0]
    named = pd.DataFrame({"a": [1]}, index=["x"])
    out = pad_rows(named, 2, 0)
    assert out.index[0] == "x" and out.index[1:].isna().all()
    s = pd.Series([1.0, 2.0], index=[3, 1], name="s")
    out = pad_rows(s, 1, -1.0)
    assert out.tolist() == [1.0, 2.0, -1.0] and out.name == "s" and list(out.index) == [3, 1, 4]


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csc_array, sp.coo_matrix])
def test_pad_sparse(kind: Any) -> None:
    x = kind(np.eye(3))
    out = pad_rows(x, 2, 0)
    assert type(out) is type(x) and out.shape == (5, 3) and out.nnz == 3
    out = pad_rows(x, 1, 2.0)
    np.testing.assert_array_equal(out.toarray()[-1], [2.0, 2.0, 2.0])


def test_pad_torch() -> None:
    torch = pytest.importorskip("torch")
    t = torch.ones(2, 3, dtype=torch.float32)
    out = pad_rows(t, 2, 0)
    assert out.shape == (4, 3) and out.dtype == torch.float32 and out[2:].eq(0).all()
    out = pad_rows(torch.tensor([1, 2]), 1, 0.5)
    assert out.dtype.is_floating_point and out.tolist() == [1.0, 2.0, 0.5]
    out = pad_rows(t, 1, [1.0, 2.0, 3.0])
    assert out[-1].tolist() == [1.0, 2.0, 3.0]


def test_pad_unsupported() -> None:
    with pytest.raises(TypeError, match="Cannot pad a minibatch of type dict"):
        pad_rows({"a": 1}, 1, 0)


# --- concat_rows ----------------------------------------------------------------------


def test_concat_rows_cases() -> None:
    assert concat_rows([]) == []
    assert concat_rows([(1, 2), [3]]) == [1, 2, 3]
    single = np.arange(3)
    assert concat_rows([single]) is single
    mixed = concat_rows([[1, 2], np.array([3, 4])])
    assert mixed == [1, 2, 3, 4] and type(mixed) is list
    left, right = pd.DataFrame({"a": [1]}, index=[5]), pd.DataFrame({"a": [2]}, index=[5])
    assert list(concat_rows([left, right]).index) == [5, 5]
    out = concat_rows([sp.csc_matrix(np.eye(2)), sp.csr_matrix(np.eye(2))])
    assert out.format == "csc" and isinstance(out, sp.spmatrix) and out.shape == (4, 2)
    with pytest.raises(TypeError, match="of type int has no rows"):
        concat_rows([[1], 2])


def test_concat_rows_is_one_call_for_many_batches() -> None:
    x = np.random.default_rng(0).normal(size=(100_000, 4))
    out = concat_rows(list(iter_row_batches(x, 7)))
    np.testing.assert_array_equal(out, x)


# --- join_columns ---------------------------------------------------------------------


def test_join_2d_equals_feature_union() -> None:
    x = np.random.default_rng(0).normal(size=(20, 5))
    branches = [("scale", StandardScaler()), ("pca", PCA(2)), ("ident", FunctionTransformer())]
    expected = FeatureUnion(branches).fit_transform(x)
    outputs = [step.fit_transform(x) for _, step in branches]
    out = join_columns(outputs, [name for name, _ in branches])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, np.hstack(outputs))


@given(st.integers(0, 20), st.lists(st.integers(0, 3), min_size=1, max_size=4))
def test_join_1d_and_2d_column_stack(n: int, widths: list[int]) -> None:
    outputs = [np.arange(n * max(w, 1)).reshape(n, w) if w else np.arange(n) for w in widths]
    out = join_columns(outputs, [f"b{i}" for i in range(len(outputs))])
    np.testing.assert_array_equal(out, np.column_stack(outputs))


def test_join_nd_along_last_axis() -> None:
    a, b = np.zeros((2, 3, 4)), np.ones((2, 3, 1))
    assert join_columns([a, b], ["a", "b"]).shape == (2, 3, 5)
    with pytest.raises(ValueError, match=r"different ndim \('a': \(2, 3, 4\), 'b': \(2, 1\)\)"):
        join_columns([a, np.ones(2)], ["a", "b"])


def test_join_sparse_gives_csr() -> None:
    dense, vec = np.ones((3, 2)), np.arange(3)
    out = join_columns([sp.csc_matrix(np.eye(3)), dense, vec], ["s", "d", "v"])
    assert out.format == "csr" and out.shape == (3, 6)
    np.testing.assert_array_equal(out.toarray(), np.column_stack([np.eye(3), dense, vec]))
    assert isinstance(join_columns([sp.coo_array(np.eye(3)), dense], ["s", "d"]), sp.sparray)


def test_join_dataframes_prefix_duplicated_columns() -> None:
    index = pd.Index([7, 3, 5], name="id")
    a = pd.DataFrame({"x": [1, 2, 3], "y": [4, 5, 6]}, index=index)
    b = pd.DataFrame({"x": [7, 8, 9], "z": [0, 0, 0]}, index=index)
    out = join_columns([a, b], ["left", "right"])
    assert list(out.columns) == ["left__x", "y", "right__x", "z"]
    assert out.index.equals(index)
    np.testing.assert_array_equal(out.to_numpy(), np.hstack([a.to_numpy(), b.to_numpy()]))


def test_join_series_and_positional_index() -> None:
    a = pd.DataFrame({"x": [1, 2]}, index=["p", "q"])
    named = pd.Series([3, 4], name="x", index=["p", "q"])
    unnamed = pd.Series([5, 6], index=[0, 1])  # another index: joined by position
    out = join_columns([a, named, unnamed], ["a", "s", "u"])
    assert list(out.columns) == ["a__x", "s__x", "u"]
    assert list(out.index) == ["p", "q"] and out.to_numpy().tolist() == [[1, 3, 5], [2, 4, 6]]


def test_join_pandas_with_arrays_gives_array() -> None:
    out = join_columns([pd.DataFrame({"x": [1, 2]}), np.array([3, 4])], ["a", "b"])
    assert isinstance(out, np.ndarray) and out.tolist() == [[1, 3], [2, 4]]


def test_join_lists_give_tuples() -> None:
    assert join_columns([[1, 2], ("a", "b"), np.array([[0, 1], [2, 3]])], ["l", "t", "a"]) == [
        (1, "a", pytest.approx(np.array([0, 1]))),
        (2, "b", pytest.approx(np.array([2, 3]))),
    ]
    assert join_columns([[1], [2]], ["a", "b"]) == [(1, 2)]


def test_join_torch() -> None:
    torch = pytest.importorskip("torch")
    out = join_columns([torch.ones(3, 2), torch.arange(3.0)], ["a", "b"])
    assert out.shape == (3, 3) and out[:, 2].tolist() == [0.0, 1.0, 2.0]


def test_join_errors_name_branches() -> None:
    with pytest.raises(ValueError, match=r"different numbers of rows .*'a': 3 rows, 'b': 2 rows"):
        join_columns([np.ones(3), np.ones(2)], ["a", "b"])
    with pytest.raises(ValueError, match="Expected one output per branch, got 1 for"):
        join_columns([np.ones(3)], ["a", "b"])
    with pytest.raises(ValueError, match="Expected one output per branch, got 0"):
        join_columns([], [])


# --- check_same_length, lazy imports ---------------------------------------------------


def test_check_same_length() -> None:
    check_same_length(4, np.ones((4, 2)), "scale")
    with pytest.raises(ValueError, match="Step 'scale' returned 3 rows for a minibatch of 4 rows"):
        check_same_length(4, [1, 2, 3], "scale")


def test_module_imports_neither_torch_nor_pandas() -> None:
    path = Path(__file__).parents[1] / "neuraxle_stream" / "_containers.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('c', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules\n"
        "assert mod.concat_rows([[1], (2,)]) == [1, 2]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _vm_flags(address: int) -> list[str]:
    """The ``VmFlags`` of this process's mapping that holds ``address`` (``/proc/self/smaps``)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(bound, 16) for bound in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="no /proc/self/smaps (not Linux)")
def test_a_large_joined_array_is_kept_off_huge_pages() -> None:
    """NumPy advises huge pages from 4 MiB on; the joined output is advised against them ("nh")."""
    rows = 64
    row_shape = (PLAIN_PAGES_BYTES // (rows * 4), 2)  # float32: 8 MiB in all
    acc = RowAccumulator(total_rows=rows)
    parts = [np.full((16, *row_shape), k, dtype=np.float32) for k in range(rows // 16)]
    for part in parts:
        acc.add(part)
    out = acc.result()
    assert type(out) is np.ndarray and out.flags.owndata and out.flags.writeable
    np.testing.assert_array_equal(out, np.concatenate(parts))
    middle = out.__array_interface__["data"][0] + out.nbytes // 2
    assert "nh" in _vm_flags(middle) and "hg" not in _vm_flags(middle)
    big = np.empty(out.shape, out.dtype)  # NumPy's own array, for contrast: its advice is untouched
    assert "nh" not in _vm_flags(big.__array_interface__["data"][0] + big.nbytes // 2)
    joined = concat_rows(parts)  # the join at the end (an input of unknown length), the same
    assert type(joined) is np.ndarray and joined.flags.owndata and joined.dtype == np.float32
    np.testing.assert_array_equal(joined, out)
    assert "nh" in _vm_flags(joined.__array_interface__["data"][0] + joined.nbytes // 2)
    mixed = concat_rows([parts[0], parts[1].astype(np.float64)])  # dtypes differ: NumPy's promotion
    assert mixed.dtype == np.float64
    np.testing.assert_array_equal(mixed, np.concatenate(parts[:2]))


@pytest.mark.parametrize(
    ("shape", "dtype"), [((8,), np.float64), ((PLAIN_PAGES_BYTES // 8, 2), object), ((0, 4), np.int8)]
)
def test_empty_rows_array_is_numpy_empty(shape: tuple[int, ...], dtype: Any) -> None:
    """Small arrays, object arrays and empty ones are what ``numpy.empty`` gives, as they are."""
    out = empty_rows_array(shape, np.dtype(dtype))
    expected = np.empty(shape, dtype)
    assert (type(out), out.shape, out.dtype, out.flags.owndata) == (np.ndarray, shape, expected.dtype, True)
    if out.dtype.hasobject:
        assert all(item is None for item in out.flat)
