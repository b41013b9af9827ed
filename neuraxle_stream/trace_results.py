"""The results of a traced call: :class:`TraceResult`, by stage, of :class:`TraceCall` records.

What ``transform(X, trace=N)`` returns (see :mod:`~neuraxle_stream.tracing`
for how the records are made): ``result[name]`` is the :class:`TraceStage` of
a step, ``stage[i]`` one :class:`TraceCall` with the real input values and the
value returned; arrays and tensors print as ``<ndarray shape dtype hash>``
(:func:`summarize`), and ``str()`` and ``_repr_html_()`` give readable tables.
"""

from __future__ import annotations

import hashlib
import html
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, overload

__all__ = ["TraceCall", "TraceResult", "TraceStage", "summarize"]

_LIST_ITEMS = 4
_TEXT_CHARS = 60


# -- value summaries ------------------------------------------------------------------


def summarize(value: Any, depth: int = 0) -> str:
    """A short, one-line description of ``value`` (arrays by shape, dtype, hash and stats).

    Examples
    --------
    >>> import numpy as np
    >>> summarize(np.zeros((2, 3), dtype=np.float32))
    '<ndarray shape=(2, 3) dtype=float32 sha256=... mean=0 min=0 max=0 nan=0>'
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        data = value.detach().cpu()
        if data.is_floating_point() or data.is_complex():
            data = data.to(torch.float64) if not data.is_complex() else data
        return _array_summary("Tensor", data.numpy(), f" device={value.device}", str(value.dtype))
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return _array_summary("ndarray", value)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame | pd.Series):
        numeric = value.select_dtypes("number") if isinstance(value, pd.DataFrame) else value
        kind = type(value).__name__
        digest = hashlib.sha256(pd.util.hash_pandas_object(value, index=True).values.tobytes()).hexdigest()[:8]
        stats = _stats(numeric.to_numpy()) if numeric.size else ""
        cols = f" columns={_truncate(list(map(str, value.columns)), depth + 1)}" if kind == "DataFrame" else ""
        return f"<{kind} shape={value.shape}{cols} sha256={digest}{stats}>"
    if isinstance(value, str):
        return repr(value) if len(value) <= _TEXT_CHARS else repr(value[:_TEXT_CHARS]) + f"...({len(value)} chars)"
    if isinstance(value, list | tuple):
        return _truncate(value, depth)
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k!r}: {summarize(v, depth + 1)}" for k, v in items[:_LIST_ITEMS])
        more = f", ...({len(items)} keys)" if len(items) > _LIST_ITEMS else ""
        return "{" + shown + more + "}"
    text = repr(value)
    return text if len(text) <= 2 * _TEXT_CHARS else text[: 2 * _TEXT_CHARS] + "..."


def _truncate(seq: list[Any] | tuple[Any, ...], depth: int) -> str:
    open_, close = ("[", "]") if isinstance(seq, list) else ("(", ")")
    if depth > 2:
        return f"{open_}...({len(seq)} items){close}"
    shown = ", ".join(summarize(v, depth + 1) for v in seq[:_LIST_ITEMS])
    more = f", ...({len(seq)} items)" if len(seq) > _LIST_ITEMS else ""
    return open_ + shown + more + close


def _array_summary(kind: str, arr: Any, extra: str = "", dtype: str | None = None) -> str:
    import numpy as np

    arr = np.asarray(arr)
    digest = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).tobytes() if arr.dtype != object
                            else repr(arr.tolist()).encode()).hexdigest()[:8]
    return f"<{kind} shape={tuple(arr.shape)} dtype={dtype or arr.dtype}{extra} sha256={digest}{_stats(arr)}>"


def _stats(arr: Any) -> str:
    import numpy as np

    arr = np.asarray(arr)
    if arr.size == 0 or arr.dtype.kind not in "biuf":
        return ""
    values = arr.astype(np.float64, copy=False)
    nan = int(np.isnan(values).sum())
    finite = values[~np.isnan(values)] if nan else values
    if finite.size == 0:
        return f" nan={nan}"
    return f" mean={finite.mean():.4g} min={finite.min():.4g} max={finite.max():.4g} nan={nan}"


# -- the result objects ---------------------------------------------------------------


class _Printable:
    """``repr`` is ``str``: a notebook shows the readable table (as hyrax does)."""

    def __repr__(self) -> str:
        return str(self)

    def _valid_keys(self) -> list[str]:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails: ``result.scale`` is ``result["scale"]``.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]  # type: ignore[index]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self._valid_keys() if k.isidentifier()})


@dataclass(repr=False)
class TraceCall(_Printable):
    """One call a step (or a ``@trace_func`` function) received in a worker.

    Attributes
    ----------
    name : str
        The function called (``"transform"`` for a transformer's minibatch call).
    stage : str
        The step whose stage holds the call.
    params : dict
        The real arguments, by parameter name (summarised only when printed).
    retval : Any
        The real return value (``None`` when the call raised).
    duration_ns : int
        Time in the call, in nanoseconds.
    worker : int
        Index of the worker within its stage.
    minibatch : int
        Index of the minibatch in its run.
    error : str or None
        ``repr`` of the exception the call raised, if it raised.
    """

    name: str
    stage: str
    params: dict[str, Any]
    retval: Any
    duration_ns: int
    worker: int
    minibatch: int
    error: str | None = None

    def _valid_keys(self) -> list[str]:
        return list(self.params)

    def __getitem__(self, key: str) -> Any:
        """The argument ``key`` as the call got it."""
        try:
            return self.params[key]
        except KeyError:
            raise KeyError(f"No parameter {key!r} in this call; valid keys are: {list(self.params)!r}.") from None

    def _cells(self) -> list[str]:
        params = ", ".join(f"{k}={summarize(v)}" for k, v in self.params.items())
        out = f"raised {self.error}" if self.error is not None else summarize(self.retval)
        return [self.name, str(self.worker), str(self.minibatch), _ns(self.duration_ns), params, out]

    def __str__(self) -> str:
        name, worker, minibatch, duration, params, out = self._cells()
        return f"{name}({params}) -> {out}  [worker {worker}, minibatch {minibatch}, {duration}]"

    def to_dict(self) -> dict[str, Any]:
        """The call with its values summarised, for JSON."""
        return {
            "name": self.name, "stage": self.stage, "worker": self.worker, "minibatch": self.minibatch,
            "duration_ns": self.duration_ns, "error": self.error,
            "params": {k: summarize(v) for k, v in self.params.items()}, "retval": summarize(self.retval),
        }


_HEADER = ["call", "worker", "minibatch", "duration", "params", "returned"]


class TraceStage(_Printable):
    """The calls of one step, in call order.

    ``stage[i]`` is the i-th :class:`TraceCall`; ``stage["name"]`` (or
    ``stage.name``) the calls of function ``name`` as a stage of their own.
    """

    def __init__(self, name: str, calls: Iterable[TraceCall] = ()) -> None:
        self._name = name
        self.calls: list[TraceCall] = list(calls)

    @property
    def stage_name(self) -> str:
        """The step name."""
        return self._name

    def _valid_keys(self) -> list[str]:
        return list(dict.fromkeys(c.name for c in self.calls))

    @overload
    def __getitem__(self, key: int) -> TraceCall: ...
    @overload
    def __getitem__(self, key: str) -> TraceStage: ...
    def __getitem__(self, key: int | str) -> TraceCall | TraceStage:
        if isinstance(key, str):
            calls = [c for c in self.calls if c.name == key]
            if not calls:
                raise KeyError(f"No call of {key!r} in stage {self._name!r}; valid keys are: {self._valid_keys()!r}.")
            return TraceStage(self._name, calls)
        return self.calls[key]

    def __len__(self) -> int:
        return len(self.calls)

    def __iter__(self) -> Iterator[TraceCall]:
        return iter(self.calls)

    def __str__(self) -> str:
        rows = [c._cells() for c in self.calls]
        title = f"stage {self._name!r}: {len(self.calls)} call{'s' if len(self.calls) != 1 else ''}"
        return title + ("\n" + _table(rows) if rows else "")

    def _repr_html_(self) -> str:
        return f"<h4>{html.escape(self._name)}</h4>" + _html_table([c._cells() for c in self.calls])

    def to_dict(self) -> list[dict[str, Any]]:
        """The calls, summarised."""
        return [c.to_dict() for c in self.calls]


class TraceResult(_Printable):
    """What every step did to the first ``n_items`` items: one stage per step, in pipeline order.

    ``result["scale"]`` and ``result.scale`` are the :class:`TraceStage` of
    step ``scale`` (each branch of a union is a stage); ``print(result)``
    shows a table per stage; ``_repr_html_`` renders it in notebooks;
    ``to_json()`` saves it with values summarised.
    """

    def __init__(self, stages: Iterable[str], n_items: int) -> None:
        self.n_items = n_items
        self._stages: dict[str, TraceStage] = {name: TraceStage(name) for name in stages}
        self._note = ""

    def _valid_keys(self) -> list[str]:
        return list(self._stages)

    def keys(self) -> list[str]:
        """The step names, in pipeline order."""
        return list(self._stages)

    def __getitem__(self, key: str) -> TraceStage:
        try:
            return self._stages[key]
        except KeyError:
            raise KeyError(f"No stage {key!r} in this trace; valid keys are: {list(self._stages)!r}.") from None

    def __contains__(self, key: object) -> bool:
        return key in self._stages

    def __iter__(self) -> Iterator[TraceStage]:
        return iter(self._stages.values())

    def __len__(self) -> int:
        return len(self._stages)

    def __str__(self) -> str:
        head = f"TraceResult: {self.n_items} item{'s' if self.n_items != 1 else ''} through {len(self)} stages"
        return "\n\n".join([head + self._note, *(str(s) for s in self._stages.values())])

    def _repr_html_(self) -> str:
        head = f"<p><b>TraceResult</b>: {self.n_items} items through {len(self)} stages{html.escape(self._note)}</p>"
        return head + "".join(s._repr_html_() for s in self._stages.values())

    def to_json(self, indent: int | None = 2) -> str:
        """The trace as JSON, values summarised (raw values stay on the calls)."""
        return json.dumps(
            {"n_items": self.n_items, "stages": {k: s.to_dict() for k, s in self._stages.items()}}, indent=indent
        )


def _ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.3g} s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e3:.3g} us"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [_HEADER, *rows]]
    return "\n".join(["  " + lines[0], "  " + "-" * len(lines[0]), *("  " + line for line in lines[1:])])


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in _HEADER)
    body = "".join("<tr>" + "".join(f"<td><code>{html.escape(c)}</code></td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
