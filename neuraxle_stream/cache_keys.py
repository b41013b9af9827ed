"""Cache keys: what a step's outputs and fitted state are stored under (see :mod:`~neuraxle_stream.caching`).

Keys are Merkle style. Per call, in the parent::

    step key   = hash(class module + qualname, cache_version, params minus
                      cache_ignore_params, fitted state ``*_``)
    input key  = hash(minibatch content)                       (first step)
    output key = hash(step key, input key)                     (every step)
    input key of step k = output key of step k-1

so a change to one step (or to one minibatch) changes the keys of that step
and of every step after it, and of nothing before. Fitted steps are cached
under ``hash(step key before fit, content hash of X and y)``.

A key is a content hash (``joblib.hash``) of a *normalised* stand-in: tensors
and modules by their values, DataFrames by ``hash_pandas_object``, functions
and lambdas by their code, constants, closure and defaults, estimators by
class, ``cache_version``, params and fitted state.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import cloudpickle
import joblib

from .steps import ItemFunction

__all__ = ["chain_key", "content_hash", "qualname", "step_key"]


def _normalise(obj: Any, depth: int = 0) -> Any:
    """A picklable, deterministic stand-in for ``obj`` to hash (tensors, modules, frames)."""
    if depth > 20:
        return repr(obj)
    module = type(obj).__module__
    if module.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return ("torch.Tensor", str(obj.dtype), tuple(t.shape), t.numpy())
        if torch is not None and isinstance(obj, torch.nn.Module):
            state = {k: _normalise(v, depth + 1) for k, v in obj.state_dict().items()}
            return ("torch.nn.Module", qualname(obj), state)
    if module.startswith("pandas") and hasattr(obj, "index"):
        import pandas as pd

        hashed = pd.util.hash_pandas_object(obj, index=True).to_numpy()
        columns = [str(c) for c in getattr(obj, "columns", [getattr(obj, "name", None)])]
        dtypes = [str(d) for d in (obj.dtypes if hasattr(obj, "columns") else [obj.dtype])]
        return ("pandas", type(obj).__name__, columns, dtypes, hashed)
    if isinstance(obj, ItemFunction):
        return ("ItemFunction", _normalise(obj.func, depth + 1))
    if hasattr(obj, "get_params") and not isinstance(obj, type):
        return ("estimator", _identity(obj, depth + 1))
    if isinstance(obj, dict):
        return {str(k): _normalise(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj).__name__, [_normalise(v, depth + 1) for v in obj]
    code = getattr(obj, "__code__", None)
    if callable(obj) and code is not None:
        # By code, not by pickle: lambdas and local functions do not pickle.
        consts = [c for c in code.co_consts if not hasattr(c, "co_code")]
        cells = []
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                cells.append(_normalise(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(None)
        defaults = _normalise(getattr(obj, "__defaults__", None), depth + 1)
        return ("callable", qualname(obj), code.co_code, repr(consts), code.co_names, cells, defaults)
    return obj


def qualname(obj: Any) -> str:
    """``module.qualname`` of ``obj``'s class (of ``obj`` itself for a class or a function)."""
    cls = obj if isinstance(obj, type) or hasattr(obj, "__code__") else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _identity(step: Any, depth: int = 0, fitted_state: bool = True) -> dict[str, Any]:
    """What a step's key is made of: class, version, params, fitted state."""
    ignored = set(getattr(step, "cache_ignore_params", ()))
    params: dict[str, Any] = {}
    if hasattr(step, "get_params"):
        for name, value in step.get_params(deep=True).items():
            if name in ignored or (name.rpartition("__")[2] in ignored and "__" in name):
                continue
            params[name] = value
    fitted = {
        k: v for k, v in vars(step).items() if k.endswith("_") and not k.startswith("_")
    } if fitted_state and hasattr(step, "__dict__") else {}
    return {
        "class": qualname(step),
        "version": getattr(step, "cache_version", None),
        "params": _normalise(params, depth + 1),
        "fitted": _normalise(fitted, depth + 1),
    }


def content_hash(obj: Any) -> str:
    """``joblib.hash`` of ``obj``, normalised; falls back to cloudpickle bytes."""
    normalised = _normalise(obj)
    try:
        return str(joblib.hash(normalised))
    except Exception:
        return hashlib.md5(cloudpickle.dumps(normalised), usedforsecurity=False).hexdigest()


def step_key(step: Any, fitted_state: bool = True) -> str:
    """The key of a step: its class, ``cache_version``, params and fitted state.

    Parameters named in the step's ``cache_ignore_params`` (say ``("verbose",
    "n_jobs")``) do not take part: changing them recomputes nothing. With
    ``fitted_state=False`` (the key of a fit, which starts afresh) the
    attributes ending in ``_`` do not either.
    """
    return content_hash(_identity(step, fitted_state=fitted_state))


def chain_key(step_key: str, input_key: str) -> str:
    """The key of a step's output: its own key and its input's key (Merkle)."""
    return str(joblib.hash((step_key, input_key)))
