"""The scikit-learn face of the queued composites, written once for all three.

:class:`Composition` gives ``get_params`` / ``set_params`` (the way
scikit-learn's ``_BaseComposition`` gives them to ``Pipeline`` and
``FeatureUnion``: each step as ``name``, its params as ``name__param``),
``named_steps``, indexing, tags, fitted state, input features, feature names,
``set_output`` and the notebook diagram. It knows a composite only through
:meth:`Composition._stage_descs` (the parsed steps); how a composite runs is
in :mod:`neuraxle_stream._composite`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils import Bunch
from sklearn.utils.metadata_routing import MetadataRouter
from sklearn.utils.validation import check_is_fitted

from . import _sklearn_output
from ._routing import Style, metadata_router
from ._validation import StageDesc
from .exceptions import InvalidParameterError
from .lifecycle import lifecycle_of, peek_lifecycle
from .steps import is_fittable

__all__ = ["Composition"]


class Composition(BaseEstimator):
    """Params, steps, tags and feature names of a composite of parsed steps."""

    steps: Any  # a parameter of the pipelines, a property of the wrapper
    #: how the composite takes fit params and forms lanes (see :class:`~neuraxle_stream.plan.Plan`)
    _style: Style = "pipeline"

    def _stage_descs(self) -> list[StageDesc]:
        raise NotImplementedError

    # -- steps and names ---------------------------------------------------------

    @property
    def named_steps(self) -> Bunch:
        """The steps by name, as given (fitted in place by ``fit``)."""
        return Bunch(**{d.name: d.owner for d in self._stage_descs()})

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self.named_steps[key]
        if isinstance(key, slice):
            if key.step not in (1, None):  # as sklearn's Pipeline: a reversed or strided pipeline is no pipeline
                raise ValueError(f"{type(self).__name__} slicing only supports a step of 1")
            clone_params = self.get_params(deep=False)
            clone_params["steps"] = list(self.steps)[key]
            sliced = type(self)(**clone_params)
            fitted = peek_lifecycle(self)
            if fitted is not None:  # the same step objects: fitted by this composite as they were
                lifecycle_of(sliced).fitted_steps.update(fitted.fitted_steps)
            return sliced
        return self._stage_descs()[key].owner

    def __len__(self) -> int:
        return len(self._stage_descs())

    # -- params ----------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, with each step's as ``name__param`` when ``deep``."""
        params: dict[str, Any] = super().get_params(deep=False)
        if not deep:
            return params
        try:
            descs = self._stage_descs()
        except InvalidParameterError:
            return params
        for d in descs:
            params[d.name] = d.owner
            if hasattr(d.owner, "get_params"):
                for key, value in d.owner.get_params(deep=True).items():
                    params[f"{d.name}__{key}"] = value
        return params

    def set_params(self, **params: Any) -> Composition:
        """Set parameters; ``name=step`` replaces a step, ``name__param`` sets its param."""
        if not params:
            return self
        own = set(self.get_params(deep=False))
        for key in [k for k in params if k in own]:
            setattr(self, key, params.pop(key))
        names = {d.name: d for d in self._stage_descs()} if params else {}
        for key in [k for k in params if k in names]:
            self._replace_step(key, params.pop(key))
            names = {d.name: d for d in self._stage_descs()}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if not sep or name not in names:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. Valid parameters are: "
                    f"{sorted(own | set(names))!r}."
                )
            nested.setdefault(name, {})[sub] = value
        for name, sub_params in nested.items():
            names[name].owner.set_params(**sub_params)
        return self

    def _replace_step(self, name: str, new: Any) -> None:
        steps = list(self.steps)
        for i, d in enumerate(self._stage_descs()):
            if d.name == name:
                entry = steps[i]
                steps[i] = (*entry[:-1], new) if isinstance(entry, tuple) else (name, new)
        self.steps = steps

    def get_metadata_routing(self) -> MetadataRouter:
        """Metadata routing of this composite (scikit-learn's metadata routing API).

        Each step is a consumer: its ``fit`` (``partial_fit`` when
        ``fit_mode="partial"``) and ``transform`` get what it requested when
        the composite's ``fit`` or ``fit_transform`` gets it; its
        ``transform`` when the composite's ``transform`` does.

        Returns
        -------
        routing : sklearn.utils.metadata_routing.MetadataRouter
        """
        return metadata_router(self, self._stage_descs(), self._style, self._fit_method())

    def _fit_method(self) -> str:
        return "partial_fit" if getattr(self, "fit_mode", "full") == "partial" else "fit"

    # -- fitted state, features ---------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The parameters, plus the names of the steps this composite fitted.

        Which steps were fitted here lives on the lifecycle, outside
        ``__dict__``; it travels with a pickle (a fitted composite nested in a
        process stage, saved to disk) so that a step whose ``fit`` records no
        ``_``-suffixed attribute still counts as fitted after loading.
        """
        state = dict(super().__getstate__())
        lifecycle = peek_lifecycle(self)
        if lifecycle is not None and lifecycle.fitted_steps:
            state["_fitted_steps"] = sorted(lifecycle.fitted_steps)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        fitted = state.pop("_fitted_steps", ())
        super().__setstate__(state)
        if fitted:
            lifecycle_of(self).fitted_steps.update(fitted)

    def __sklearn_is_fitted__(self) -> bool:
        for d in self._stage_descs():
            if is_fittable(d.step):
                try:
                    check_is_fitted(d.step)
                except NotFittedError:
                    return False
        return True

    def _steps_name_features(self) -> bool:
        return _sklearn_output.pipeline_names_available(self)

    @_sklearn_output.available_if_explained(_steps_name_features)
    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names, as ``sklearn.pipeline.Pipeline`` gives them.

        ``input_features`` go through each step's ``get_feature_names_out`` in
        turn (``"passthrough"`` steps are skipped). Available when every other
        step has ``get_feature_names_out``.
        """
        names: np.ndarray = _sklearn_output.pipeline_feature_names(self, input_features)
        return names

    def set_output(self, *, transform: str | None = None) -> Composition:
        """Set the output container of ``transform`` and ``fit_transform``, and of every step.

        As ``sklearn.pipeline.Pipeline.set_output``, each step's output is set,
        so the workers' copies give DataFrames; the composite's output is then a
        DataFrame whose columns are ``get_feature_names_out()`` and whose index
        is the input's (a ``RangeIndex`` for other inputs).

        Parameters
        ----------
        transform : {"default", "pandas"} or None, default=None
            ``"pandas"``: DataFrame output; ``"default"``: the steps' own
            output; ``None``: unchanged.

        Returns
        -------
        self
        """
        composite: Composition = _sklearn_output.set_output(self, transform)
        return composite

    def _sk_visual_block_(self) -> Any:
        # the notebook diagram: the stages in series, each with its workers
        return _sklearn_output.visual_block(self, "serial")

    def _input_steps(self) -> list[Any]:
        """The steps that take the composite's input as it is: the first one past ``"passthrough"``."""
        try:
            return [d.step for d in self._stage_descs() if d.kind == "step"][:1]
        except InvalidParameterError:
            return []

    @property
    def n_features_in_(self) -> int:
        """Number of features seen during ``fit``.

        The first step's (a union: the first branch's that has it), as
        scikit-learn's ``Pipeline`` and ``FeatureUnion`` give it; else that of
        the input of the last ``fit`` (a first step ``"passthrough"`` or a
        function). ``AttributeError`` when neither is known.
        """
        n: int = _sklearn_output.input_attribute(self, "n_features_in_", self._input_steps())
        return n

    @property
    def feature_names_in_(self) -> np.ndarray:
        """Names of the features seen during ``fit`` (a DataFrame's columns), as ``n_features_in_``."""
        names: np.ndarray = _sklearn_output.input_attribute(self, "feature_names_in_", self._input_steps())
        return names

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        try:
            descs = self._stage_descs()
            if not descs and self._style == "pipeline":
                return BaseEstimator.__sklearn_tags__(self)  # as sklearn's empty Pipeline
            tags.requires_fit = any(is_fittable(d.step) for d in descs)
            first = descs[0].step
            if hasattr(first, "__sklearn_tags__"):
                tags.input_tags = first.__sklearn_tags__().input_tags
            # NaN and sparse input must suit every validating step (as sklearn's
            # Pipeline does for ``sparse``): a later step may reject what the first takes.
            steps_tags = [
                t for t in (d.runnable.__sklearn_tags__() for d in descs
                            if hasattr(d.runnable, "__sklearn_tags__"))
                if not t.no_validation
            ]
            if steps_tags:
                tags.input_tags.allow_nan = all(t.input_tags.allow_nan for t in steps_tags)
                tags.input_tags.sparse = all(t.input_tags.sparse for t in steps_tags)
        except (InvalidParameterError, IndexError):
            pass
        return tags
