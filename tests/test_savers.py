"""Savers: the registry, custom and failing savers, TorchSaver, start methods."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from saver_doubles import (
    DeviceStep,
    HoldsRecorded,
    MetaHolder,
    StepWithFailingSaver,
    StepWithOwnSaver,
    TorchThreads,
    WhoLoadedMe,
)

from neuraxle_stream import (
    CloudpickleSaver,
    InvalidParameterError,
    SequentialQueuedPipeline,
    TorchSaver,
)
from neuraxle_stream.backends import ProcessBackend
from neuraxle_stream.savers import load_step, save_step, saver_for
from neuraxle_stream.start_methods import resolve_context, uses_cuda

# --- the registry -----------------------------------------------------------------------


def test_registry_picks_own_then_torch_then_cloudpickle() -> None:
    assert type(saver_for(StepWithOwnSaver())).__name__ == "RecordingSaver"
    assert isinstance(saver_for(WhoLoadedMe()), CloudpickleSaver)
    assert isinstance(saver_for(HoldsRecorded()), TorchSaver)  # a nested object has its own saver
    # use_savers=True: savers run for every step
    assert isinstance(saver_for(WhoLoadedMe(), use_savers=True), TorchSaver)


def test_nested_object_with_own_saver_is_loaded_by_it() -> None:
    step = load_step(save_step(HoldsRecorded(), "holder"))
    assert step.transform([0])[0].startswith("RecordingSaver@")


@pytest.mark.timeout(60)
def test_custom_saver_in_savers_attribute_is_used_in_workers() -> None:
    pipe = SequentialQueuedPipeline([("own", 2, StepWithOwnSaver())], batch_size=2)
    stamps = pipe.fit_transform(list(range(8)))
    assert all(s.startswith("RecordingSaver@") for s in stamps)
    assert {s.split("@")[1] for s in stamps} != {str(os.getpid())}  # loaded in the workers


@pytest.mark.timeout(60)
def test_failing_saver_names_the_step() -> None:
    pipe = SequentialQueuedPipeline([("broken_step", 2, StepWithFailingSaver())], batch_size=2)
    with pytest.raises(InvalidParameterError, match=r"Step 'broken_step' \(StepWithFailingSaver\).*FailingSaver failed"):
        pipe.fit_transform(list(range(4)))


def test_no_files_left_in_temp_dir_after_100_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from neuraxle_stream import TorchModuleStep

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert tempfile.gettempdir() == str(tmp_path)
    steps = [TorchModuleStep(torch.nn.Linear(4, 2)), WhoLoadedMe(), HoldsRecorded()]
    for i in range(100):
        step = steps[i % len(steps)]
        load_step(save_step(step, "step", use_savers=bool(i % 2)), [("device", "cpu")])
    assert list(tmp_path.iterdir()) == []


# --- TorchSaver ---------------------------------------------------------------------------


def test_meta_tensor_and_buffers_are_rebuilt_exactly() -> None:
    torch = pytest.importorskip("torch")
    step = MetaHolder()
    copy = load_step(save_step(step, "holder"))
    assert copy.skeleton.device.type == "meta"
    assert copy.skeleton.shape == (3, 5) and copy.skeleton.dtype == torch.float16
    norm, norm_copy = step.layers["norm"][0], copy.layers["norm"][0]
    assert norm_copy is not norm
    for (key, value), (key_copy, value_copy) in zip(
        norm.state_dict().items(), norm_copy.state_dict().items(), strict=True
    ):
        assert key == key_copy
        assert value.dtype == value_copy.dtype and torch.equal(value, value_copy), key
    assert norm_copy.training == norm.training
    assert norm_copy.weight.requires_grad and isinstance(norm_copy.weight, torch.nn.Parameter)


def test_tied_weights_stay_tied() -> None:
    torch = pytest.importorskip("torch")
    step = WhoLoadedMe()
    step.layer = torch.nn.Linear(3, 3)  # type: ignore[attr-defined]
    step.alias = step.layer.weight  # type: ignore[attr-defined]
    copy = load_step(save_step(step, "tied"))
    assert copy.alias is copy.layer.weight


def test_tensors_are_loaded_onto_the_workers_device() -> None:
    """``load_step`` hands the worker's ``device`` to the saver, which maps the tensors onto it.

    The ``meta`` device stands in for a GPU: the step's own device is ``cpu``.
    """
    torch = pytest.importorskip("torch")
    from neuraxle_stream import TorchModuleStep

    payload = save_step(TorchModuleStep(torch.nn.Linear(2, 2), device="cpu"), "embed")
    on_worker = load_step(payload, [("device", "meta")])
    assert on_worker.device == "meta"
    assert on_worker.module.weight.device.type == "meta"
    assert load_step(payload).module.weight.device.type == "cpu"  # no argument: the step's own device


def test_cuda_tensors_are_never_pickled() -> None:
    """Every tensor is cut out of the pickle and saved apart as a CPU tensor."""
    pytest.importorskip("torch")
    from neuraxle_stream.savers import _CuttingPickler

    step = MetaHolder()
    pickler = _CuttingPickler(io.BytesIO(), root=step)
    pickler.dump(step)
    assert pickler.tensors and all(t.device.type == "cpu" for t in pickler.tensors)


@pytest.mark.timeout(60)
def test_process_workers_limit_torch_threads() -> None:
    pytest.importorskip("torch")
    pipe = SequentialQueuedPipeline([("threads", 2, TorchThreads())], batch_size=2, use_savers=True)
    counts = set(pipe.fit_transform(list(range(8))))
    assert counts == {max(1, (os.cpu_count() or 1) // 2)}


# --- start methods --------------------------------------------------------------------------


def test_cuda_device_in_a_step_or_worker_arguments_is_seen() -> None:
    assert uses_cuda([DeviceStep("cuda:0")], [])
    assert uses_cuda([DeviceStep()], [[("device", "cuda:1")]])
    assert not uses_cuda([DeviceStep(), WhoLoadedMe()], [[("device", "cpu")]])


def _backend_of(pipe: SequentialQueuedPipeline) -> ProcessBackend:
    """The backend a run of ``pipe`` would use; no worker is started."""
    plan = pipe._plan()
    specs = plan.specs(plan.lanes(0, len(plan.stages)))
    backend = plan.make_backend(specs)
    assert isinstance(backend, ProcessBackend)
    return backend


def test_cuda_steps_are_spawned() -> None:
    pipe = SequentialQueuedPipeline([("decode", DeviceStep("cuda:0")), ("add", WhoLoadedMe())])
    assert _backend_of(pipe).ctx.get_start_method() == "spawn"
    per_worker = SequentialQueuedPipeline(
        [("embed", 2, [[("device", "cuda:0")], [("device", "cuda:1")]], 4, DeviceStep())]
    )
    assert _backend_of(per_worker).ctx.get_start_method() == "spawn"
    cpu_only = SequentialQueuedPipeline([("add", DeviceStep("cpu"))], mp_context="forkserver")
    assert _backend_of(cpu_only).ctx.get_start_method() == "forkserver"


@pytest.mark.timeout(60)
def test_fork_with_cuda_is_refused() -> None:
    pipe = SequentialQueuedPipeline([("decode", DeviceStep("cuda:0"))], mp_context="fork")
    with pytest.raises(InvalidParameterError, match=r"'mp_context'.*must not be 'fork' when workers use CUDA"):
        pipe.fit_transform(np.arange(4))
    with pytest.raises(InvalidParameterError, match="must not be 'fork'"):
        resolve_context("fork", uses_cuda=True)
    assert resolve_context(None, uses_cuda=True).get_start_method() == "spawn"


@pytest.mark.gpu
def test_cuda_initialised_in_parent_means_spawn() -> None:  # pragma: no cover - needs CUDA
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    torch.zeros(1, device="cuda:0")
    assert uses_cuda([WhoLoadedMe()], [])
    pipe = SequentialQueuedPipeline([("plain", WhoLoadedMe())])
    assert _backend_of(pipe).ctx.get_start_method() == "spawn"
