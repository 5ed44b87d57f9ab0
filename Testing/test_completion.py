"""Completion engine on a tiny trained model: outputs, caching, determinism, devices."""

import numpy as np
import pytest
import torch

from SkullVAECompletionLib.errors import CancelledError, DeviceError, InputError
from SkullVAECompletionLib.inference import completion as completion_module
from SkullVAECompletionLib.inference.completion import SkullCompleter
from SkullVAECompletionLib.inference.device import resolve_device
from SkullVAECompletionLib.inference.progress import check_cancel
from SkullVAECompletionLib.synthetic import cranial_defect, defective_pair


def test_outputs_are_binary_masks_on_the_input_grid(completer, encoded, synthetic_case):
    result = completer.complete(encoded, gamma=1.0, defect_type="cranial")
    defective = synthetic_case["defective"].astype(bool)
    for volume in (result.completed, result.implant):
        assert volume.shape == defective.shape and volume.dtype == np.uint8
        assert set(np.unique(volume)) <= {0, 1}
    implant = result.implant.astype(bool)
    assert not np.any(implant & defective), "the implant never overlaps the defective skull"
    assert np.array_equal(result.completed.astype(bool), defective | implant), "completed = defective ∪ implant"
    assert result.implant_volume_ml == pytest.approx(implant.sum() * 27 / 1000)
    assert result.defect_type == "cranial" and result.gamma == 1.0
    assert set(result.timings) >= {"decode", "implant", "total"}


def test_implant_is_in_the_defect(completer, encoded, synthetic_case):
    result = completer.complete(encoded, defect_type="cranial")
    implant = result.implant.astype(bool)
    assert implant.sum() > 0.3 * synthetic_case["implant"].sum(), "a real implant, not a speck"
    # Most of it sits in the defect's neighbourhood (a ball 1.5× the defect radius).
    near_defect = cranial_defect(implant.shape, synthetic_case["ijk_to_ras"], radius_mm=45)
    assert (implant & near_defect).sum() > 0.5 * implant.sum()


def test_input_is_never_modified(completer, synthetic_case):
    defective = synthetic_case["defective"].copy()
    completer.run(defective, synthetic_case["ijk_to_ras"], gamma=1.0)
    assert np.array_equal(defective, synthetic_case["defective"])


def test_new_gamma_only_re_decodes(completer, encoded, monkeypatch):
    calls = {"encode": 0, "decode": 0}
    model = completer.model
    original_encode, original_decode = model.encode, model.decode

    def count(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(model, "encode", count("encode", original_encode))
    monkeypatch.setattr(model, "decode", count("decode", original_decode))
    for gamma in (0.0, 0.5, 1.5):
        completer.complete(encoded, gamma=gamma, defect_type="cranial")
    # γ = 0 was decoded once already, at encoding, for the trust figure: only 0.5 and 1.5 are new.
    assert calls == {"encode": 0, "decode": 2}
    completer.complete(encoded, gamma=0.5, defect_type="cranial")  # cached
    assert calls["decode"] == 2


def test_gamma_changes_the_result(completer, encoded):
    small = completer.complete(encoded, gamma=0.0, defect_type="cranial")
    large = completer.complete(encoded, gamma=3.0, defect_type="cranial")
    assert not np.array_equal(small.implant, large.implant)


def test_results_are_deterministic(tiny_bundle, synthetic_case):
    first = SkullCompleter(tiny_bundle, device="cpu").run(synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    second = SkullCompleter(tiny_bundle, device="cpu").run(synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    assert np.array_equal(first.implant, second.implant)
    assert first.confidence == second.confidence


def test_auto_defect_type_and_override(completer, encoded):
    auto = completer.complete(encoded)
    assert auto.defect_type in ("cranial", "facial")
    assert auto.detected_type in ("complete", "cranial", "facial")
    assert 0.0 <= auto.confidence <= 1.0
    assert sum(encoded.class_probabilities.values()) == pytest.approx(1.0)
    facial = completer.complete(encoded, defect_type="facial")
    assert facial.defect_type == "facial"
    with pytest.raises(InputError, match="unknown defect class 'dental' .* choose one of auto, cranial, facial"):
        completer.complete(encoded, defect_type="dental")


def test_region_classes_detection_and_override(region_bundle, synthetic_case):
    """A model with region classes: the class head's probabilities over every class, the detected class, a chosen
    class, the decoded skull at γ = 0 and at the default γ, and an error naming the model's classes."""
    from SkullVAECompletionLib.inference import regions
    from SkullVAECompletionLib.inference.completion import SkullCompleter

    completer = SkullCompleter(region_bundle, device="cpu")
    assert completer.defect_choices == ("auto", *completer.bundle.defect_classes)
    encoded = completer.encode(synthetic_case["defective"], synthetic_case["ijk_to_ras"])
    assert list(encoded.class_probabilities) == list(regions.CLASS_NAMES)
    assert sum(encoded.class_probabilities.values()) == pytest.approx(1.0)
    auto = completer.complete(encoded)
    assert auto.defect_type in completer.bundle.defect_classes
    assert auto.class_probabilities == encoded.class_probabilities
    chosen = completer.complete(encoded, defect_type="facial")
    assert chosen.defect_type == "facial" and chosen.confidence == pytest.approx(encoded.class_probabilities["facial"])
    at_zero = completer.expected_skull(encoded, gamma=0.0)
    shifted = completer.expected_skull(encoded)
    assert at_zero.shape == shifted.shape == completer.bundle.grid.shape and not np.array_equal(at_zero, shifted)
    with pytest.raises(InputError, match="choose one of auto, "):
        completer.complete(encoded, defect_type="cranial")
    with pytest.raises(InputError, match="no decoded skull"):
        completer.expected_skull(encoded, method="mirror")


@pytest.mark.parametrize("method", ["dev", "knn", "refine"])
def test_completion_methods(completer, encoded, method):
    result = completer.complete(encoded, gamma=1.0, defect_type="cranial", method=method)
    assert result.method == method and result.implant.shape == encoded.defective.shape


def test_uncertainty_map(completer, encoded):
    result = completer.complete(encoded, gamma=1.0, defect_type="cranial", uncertainty_samples=4)
    assert result.uncertainty.shape == encoded.defective.shape and result.uncertainty.dtype == np.float32
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0
    again = completer.complete(encoded, gamma=1.0, defect_type="cranial", uncertainty_samples=4)
    assert np.array_equal(result.uncertainty, again.uncertainty)


def test_facial_case_runs(completer):
    _, defective, matrix = defective_pair("facial")
    result = completer.run(defective, matrix, defect_type="facial")
    assert result.implant.shape == defective.shape


def test_cancel_from_progress_callback(completer, synthetic_case):
    with pytest.raises(CancelledError):
        completer.run(synthetic_case["defective"], synthetic_case["ijk_to_ras"], progress=check_cancel(lambda: True))


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA was requested but no CUDA device is available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_cuda_out_of_memory_falls_back_to_cpu(tiny_bundle, synthetic_case, caplog, monkeypatch):
    """Simulate a GPU that runs out of memory: the completer warns and finishes on the CPU."""
    completer = SkullCompleter(tiny_bundle, device="cpu")
    completer.device = torch.device("cuda")  # pretend; tensors are only moved when a call succeeds
    attempts = []

    def fake_to(tensor, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, str | torch.device) and torch.device(target).type == "cuda":
            attempts.append(target)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original_to(tensor, *args, **kwargs)

    original_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with caplog.at_level("WARNING", logger=completion_module.__name__):
        result = completer.run(synthetic_case["defective"], synthetic_case["ijk_to_ras"], defect_type="cranial")
    assert attempts, "the CUDA path was tried"
    assert completer.device.type == "cpu"
    assert "out of memory" in caplog.text
    reference = SkullCompleter(tiny_bundle, device="cpu")
    monkeypatch.undo()
    expected = reference.run(synthetic_case["defective"], synthetic_case["ijk_to_ras"], defect_type="cranial")
    assert np.array_equal(result.implant, expected.implant)
