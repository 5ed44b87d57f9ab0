"""Completion: encode once → shift the latent by γ·DEV → decode → implant.

>>> completer = SkullCompleter()                       # bundled model, CUDA when available
>>> encoded = completer.encode(mask, ijk_to_ras)       # validates, maps to the model grid, encodes μ
>>> result = completer.complete(encoded, gamma=1.0)    # a new γ only re-decodes
>>> result.implant, result.completed                   # uint8 arrays on the input's voxel grid

:class:`SkullCompleter` holds the model on its device and runs the steps: the result types are in :mod:`.results`,
the latent arithmetic (DEV shift, k-NN DEV, refinement, uncertainty) in :mod:`.latent`, the implant cut from the
expected skull in :mod:`.implant_stage`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import DeviceError, InputError
from ..extraction.mirror import mirror_implant, mirror_skull
from ..extraction.rim import HoleSearch, RimOptions, find_holes_in
from ..model.bundle import ModelBundle, load_bundle
from ..model.networks import bone_probability
from ..options import AUTO, DECODER_METHODS, METHOD_CHOICES, PRECISION_CHOICES, RIM_EXTRACTIONS
from ..preprocessing.geometry import (
    bone_points_ras,
    plan_mapping_from_bone,
    planning_counts,
    skull_frame,
    to_model_grid,
)
from ..preprocessing.validation import validate_mask
from .detection import BY_DEFECT_POSITION, located_class, no_defect_is_complete, region_at
from .device import autocast, half_precision_agreement, resolve_device
from .implant_stage import completion_warnings, extract_implant, extraction_for, mirrored_expectation
from .latent import class_probabilities, refined_latent, shifted_latent, uncertainty_map
from .progress import ProgressCallback, report_progress
from .results import CompletionResult, EncodedSkull
from .trust import TrustPolicy, UntrustedInputError, check_skull_shell, reconstruction_trust

logger = logging.getLogger(__name__)

# The choices (devices, precisions, methods, extractions) are in options.py, shared with the GUI and the CLI.
HALF_PRECISION_MIN_DICE = 0.995  # "auto" uses float16 only if its decoded skull agrees this well with float32
DECODE_CACHE_SIZE = 8


class SkullCompleter:
    """Runs a model bundle on skull masks. Not thread-safe; one per worker."""

    def __init__(
        self,
        bundle: ModelBundle | str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "float32",
    ) -> None:
        """``precision``: "float32" (default), "float16" (CUDA only: float16 autocast) or "auto" (float16 on CUDA
        once a check on the first skull shows that it decodes the same bone as float32, within 0.5 % Dice)."""
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        self.device = resolve_device(device)
        self.model = self.bundle.model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.set_precision(precision)

    # --- precision -------------------------------------------------------------------------------
    # Tests set this to exercise the float16 code path on a CPU; users never need it.
    _allow_half_on_cpu = False

    def set_precision(self, precision: str) -> None:
        """Choose the inference precision (see ``__init__``); float16 on a CPU is ignored with a warning."""
        if precision not in PRECISION_CHOICES:
            raise DeviceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        self.requested_precision = precision
        self._half_verified = False
        half_capable = self.device.type == "cuda" or self._allow_half_on_cpu
        if precision == "float16" and not half_capable:
            logger.warning("float16 inference needs a CUDA device; using float32 on the %s", self.device.type)
        # "auto" starts in float32 and switches after the agreement check in encode().
        self.precision = "float16" if precision == "float16" and half_capable else "float32"

    def _check_half_agreement(self, x: torch.Tensor, mu: torch.Tensor) -> None:
        """For precision "auto": decode this skull in float32 and float16; use float16 from now on if they agree."""
        agreement = half_precision_agreement(self.model, x, mu, self._on_device)
        self._half_verified = True
        if agreement >= HALF_PRECISION_MIN_DICE:
            self.precision = "float16"
            logger.info("float16 inference agrees with float32 (Dice %.4f): using float16", agreement)
        else:
            logger.warning("float16 inference disagrees with float32 (Dice %.4f): staying with float32", agreement)

    # --- device handling -------------------------------------------------------------------
    def _on_device(self, function: Callable[..., Any], *tensors: torch.Tensor) -> Any:
        """Run ``function`` on the current device; on CUDA out-of-memory, warn and redo it on the CPU."""
        try:
            return function(*(t.to(self.device) for t in tensors))
        except torch.cuda.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            logger.warning("CUDA ran out of memory; continuing on the CPU (slower)")
            torch.cuda.empty_cache()
            self.device = torch.device("cpu")
            self.model.to(self.device)
            if not self._allow_half_on_cpu:
                self.precision = "float32"  # float16 is for CUDA only
            return function(*(t.to(self.device) for t in tensors))

    # --- public API ------------------------------------------------------------------------
    def encode(
        self,
        mask: np.ndarray,
        ijk_to_ras: np.ndarray,
        name: str = "input",
        label: int | None = None,
        progress: ProgressCallback | None = None,
        refuse_untrusted: bool = True,
    ) -> EncodedSkull:
        """Validate the skull, map it to the model grid, encode it (μ, log σ²) and judge how well the model reads it.

        Raises :class:`InputError` for masks that are no skull shell and, with ``refuse_untrusted``,
        :class:`~.trust.UntrustedInputError` when the model's reconstruction at γ = 0 misses too much of the input's
        bone (trust.py); ``encoded.trust`` has the figure either way.
        """
        report_progress(progress, 0.0, "Checking the input skull")
        defective = validate_mask(mask, ijk_to_ras, name=name, label=label)
        report_progress(progress, 0.1, "Mapping the skull to the model grid")
        grid = self.bundle.grid
        counts = planning_counts(defective, ijk_to_ras, grid)
        occupancy, occ_to_ras = counts.occupancy()
        points = bone_points_ras(occupancy, occ_to_ras)
        frame = skull_frame(points, grid.base_slab_mm)
        tick = time.perf_counter()
        check_skull_shell(points, float(occupancy.sum()) * abs(np.linalg.det(occ_to_ras[:3, :3])) / 1000.0,
                          frame.size_mm, frame.extents_mm, name)
        shell_seconds = time.perf_counter() - tick
        mapping = plan_mapping_from_bone(points, tuple(defective.shape), ijk_to_ras, grid, frame)
        model_input = to_model_grid(defective, mapping, counts)
        if model_input.max() < 0.5:
            raise InputError(f"{name}: the skull does not overlap the model grid; check the volume's geometry")
        report_progress(progress, 0.3, "Encoding")

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode(), autocast(self.device, self.precision):
                mu, logvar = self.model.encode(x)
            return mu.float().cpu(), logvar.float().cpu()

        x = torch.from_numpy(model_input)[None, None]
        mu, logvar = self._on_device(run, x)
        if self.requested_precision == "auto" and not self._half_verified:
            if self.device.type == "cuda" or self._allow_half_on_cpu:
                self._check_half_agreement(x, mu)
        encoded = EncodedSkull(
            mapping=mapping,
            defective=defective,
            model_input=model_input,
            mu=mu,
            logvar=logvar,
            class_probabilities=self.class_probabilities(mu[0].numpy()),
        )
        tick = time.perf_counter()
        encoded.trust = reconstruction_trust(model_input, self._decode_cached(encoded, "", 0.0, "dev", {}),
                                             self.trust_policy, mapping.scale)
        encoded.check_seconds = {"shell_check": shell_seconds, "trust": time.perf_counter() - tick}
        if encoded.trust.status == "refuse" and refuse_untrusted:
            raise UntrustedInputError(encoded.trust.message(name))
        if encoded.trust.status == "warn":
            logger.warning("%s", encoded.trust.message(name))
        return encoded

    @property
    def trust_policy(self) -> TrustPolicy:
        """The bundle's thresholds for the trust figure (manifest key ``trust``; defaults without one)."""
        return TrustPolicy.from_dict(self.bundle.manifest.get("trust"))

    def class_probabilities(self, latent: np.ndarray) -> dict[str, float]:
        """Posterior over the bundle's classes (latent.class_probabilities) on the completer's device."""
        return class_probabilities(self.model, self.bundle, latent, self.device)

    @property
    def defect_choices(self) -> tuple[str, ...]:
        """What ``defect_type`` accepts with this model: "auto" and its defect classes."""
        return (AUTO, *self.bundle.defect_classes)

    def choose_defect_type(self, encoded: EncodedSkull, defect_type: str = AUTO) -> tuple[str, float]:
        """The defect class to use and the model's probability for it."""
        probabilities = encoded.class_probabilities
        available = self.bundle.defect_classes
        if defect_type != AUTO:
            if defect_type not in available:
                raise InputError(f"unknown defect class {defect_type!r} for model {self.bundle.model_id} "
                                 f"{self.bundle.version}; choose one of {', '.join(self.defect_choices)}")
            return defect_type, probabilities.get(defect_type, 0.0)
        if encoded.detected_type in available:
            return encoded.detected_type, probabilities.get(encoded.detected_type, 0.0)
        # Detected as a class the model has no shift for (a complete skull): its most likely defect class.
        chosen = max(available, key=lambda t: probabilities.get(t, 0.0))
        logger.warning("the skull looks %s (p=%.2f); completing it as %s anyway", encoded.detected_type,
                       probabilities.get(encoded.detected_type, 0.0), chosen)
        return chosen, probabilities.get(chosen, 0.0)

    def complete(
        self,
        encoded: EncodedSkull,
        gamma: float | None = None,
        defect_type: str = "auto",
        smoothing: bool = True,
        uncertainty_samples: int = 0,
        method: str | None = None,
        progress: ProgressCallback | None = None,
        extraction: str | None = None,
    ) -> CompletionResult:
        """Decode z + γ·DEV and extract the implant at the input's resolution.

        ``extraction``: "rim" (surfaces fitted to the intact bone, extraction/rim), "decode" (decoded minus input bone,
        implant.py) or "union" (both); None: the bundle's choice for the class (``completion_options`` keys
        ``extraction_by_class``, then ``extraction``), else "rim".

        With ``defect_type`` "auto" the class head proposes the class and the region where the defect lies decides
        (detection.py): the holes the rim stage finds in the class head's decode, then the implant fitted there; the
        completion is made with the region's class when it differs. The detection is kept on ``encoded``: later γ
        steps complete with it directly.
        """
        settings = dict(smoothing=smoothing, uncertainty_samples=uncertainty_samples, method=method,
                        progress=progress, extraction=extraction)
        locate = defect_type == AUTO and encoded.located is None
        resolved, search, tick = None, None, time.perf_counter()
        if locate:
            resolved, search = self._find_holes_first(encoded, gamma, method, extraction)
            region = None if search is None else region_at(search.centre_in_model(), encoded.model_input)
            if region in self.bundle.defect_classes and region != resolved[0]:
                # The holes lie in another class's region: complete with that class straight away, without first
                # fitting an implant to the class head's decode.
                logger.info("the defect lies in the %s region: completing it as %s (the class head said %s)",
                            region, region, resolved[0])
                encoded.located = (region, BY_DEFECT_POSITION)
                return self._located(self._complete_as(encoded, gamma, AUTO, **settings), encoded, tick)
        result = self._complete_as(encoded, gamma, defect_type, **settings, resolved=resolved, search=search)
        if not locate or result.extraction not in RIM_EXTRACTIONS or result.method == "mirror":
            return no_defect_is_complete(result)
        encoded.located = located_class(encoded.head_type, result.implant, encoded.mapping, encoded.model_input,
                                        self.bundle.defect_classes, result.defect_fields)
        if encoded.detected_type in self.bundle.defect_classes and encoded.detected_type != result.defect_type:
            logger.info("the defect lies in the %s region: completing it as %s (the class head said %s)",
                        encoded.detected_type, encoded.detected_type, result.defect_type)
            result = self._complete_as(encoded, gamma, AUTO, **settings)
        return self._located(result, encoded, tick)

    @staticmethod
    def _located(result: CompletionResult, encoded: EncodedSkull, start: float) -> CompletionResult:
        """``result`` with the detection it was completed with; timings["detect"]: the time spent before its own
        completion began (the first class's decode, hole search and, where needed, its fit)."""
        total = time.perf_counter() - start
        result.timings["detect"] = max(0.0, total - result.timings["total"])
        result.timings["total"] = total
        result.detected_type, result.detected_by = encoded.detected_type, encoded.detected_by
        return no_defect_is_complete(result)

    def _find_holes_first(self, encoded: EncodedSkull, gamma: float | None, method: str | None,
                          extraction: str | None) -> tuple[tuple, HoleSearch | None]:
        """The resolved choices of a completion with the class head's class, and the holes the rim stage finds in
        its decode (None where the implant is not the rim's: the mirror method, a decode extraction)."""
        resolved = self._resolve(encoded, gamma, AUTO, method)
        chosen, _, gamma, method, options = resolved
        if method == "mirror" or extraction_for(chosen, method, extraction, options) not in RIM_EXTRACTIONS:
            return resolved, None
        probability = self._decode_cached(encoded, chosen, gamma, method, options)
        return resolved, find_holes_in(probability, encoded.defective, encoded.mapping,
                                       RimOptions.from_dict(options.get("rim")), encoded.midsagittal_reflection())

    def _complete_as(
        self,
        encoded: EncodedSkull,
        gamma: float | None,
        defect_type: str,
        smoothing: bool,
        uncertainty_samples: int,
        method: str | None,
        progress: ProgressCallback | None,
        extraction: str | None,
        resolved: tuple | None = None,
        search: HoleSearch | None = None,
    ) -> CompletionResult:
        """One completion with the class ``defect_type`` ("auto": the detected one), no further detection."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        chosen, confidence, gamma, method, options = resolved or self._resolve(encoded, gamma, defect_type, method)
        extraction = extraction_for(chosen, method, extraction, options)
        if method == "mirror":
            report_progress(progress, 0.4, "Mirroring the healthy side")
            if encoded.mirror is None:
                encoded.mirror = mirror_skull(encoded.defective, encoded.mapping.ijk_to_ras)
            if extraction == "rim":
                probability, expected_mapping = mirrored_expectation(encoded)
        else:
            report_progress(progress, 0.4, f"Decoding ({chosen}, γ = {gamma:.2f}, {method})")
            probability = self._decode_cached(encoded, chosen, gamma, method, options)
        timings["decode"] = time.perf_counter() - start
        report_progress(progress, 0.7, "Fitting the implant to the rim" if extraction in RIM_EXTRACTIONS
                        else "Extracting the implant")
        tick = time.perf_counter()
        if method == "mirror" and extraction == "decode":
            implant = mirror_implant(encoded.defective, encoded.mapping.ijk_to_ras, encoded.mirror)[0]
            message, holes, defect_fields = "", [], None
        else:
            implant, message, holes, defect_fields = extract_implant(
                encoded, probability, extraction, options, smoothing, expected_mapping if method == "mirror" else None,
                defect_type=chosen, search=search)
        if message:
            logger.info("%s", message)
        timings["implant"] = time.perf_counter() - tick
        uncertainty = None
        if uncertainty_samples > 0:
            report_progress(progress, 0.85, f"Sampling {uncertainty_samples} decodes for the uncertainty map")
            tick = time.perf_counter()
            shifted = shifted_latent(self.bundle, encoded, chosen, gamma, "dev", options)
            uncertainty = uncertainty_map(encoded, shifted, uncertainty_samples, self._decode)
            timings["uncertainty"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        report_progress(progress, 1.0, "Done")
        voxel_ml = float(np.prod(encoded.mapping.input_spacing)) / 1000.0
        return CompletionResult(
            defective=encoded.defective,
            implant=implant,
            defect_type=chosen,
            detected_type=encoded.detected_type,
            confidence=confidence,
            gamma=gamma,
            method=method,
            uncertainty=uncertainty,
            timings=timings,
            implant_volume_ml=float(np.count_nonzero(implant)) * voxel_ml,
            extraction=extraction,
            message=message,
            holes=holes,
            implant_field=defect_fields if extraction == "rim" else None,  # "union": more than the rim's part
            defect_fields=defect_fields,
            class_probabilities=dict(encoded.class_probabilities),
            detected_by=encoded.detected_by,
            trust=encoded.trust,
            warnings=completion_warnings(encoded, chosen),
        )

    def run(
        self,
        mask: np.ndarray,
        ijk_to_ras: np.ndarray,
        gamma: float | None = None,
        defect_type: str = "auto",
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> CompletionResult:
        """Encode and complete in one call."""
        tick = time.perf_counter()
        encoded = self.encode(mask, ijk_to_ras, progress=progress)
        encode_time = time.perf_counter() - tick
        result = self.complete(encoded, gamma=gamma, defect_type=defect_type, progress=progress, **options)
        result.timings["encode"] = encode_time
        result.timings["total"] += encode_time
        return result

    def expected_skull(self, encoded: EncodedSkull, gamma: float | None = None, defect_type: str = AUTO,
                       method: str | None = None) -> np.ndarray:
        """The decoded skull's bone probability on the model grid for μ shifted by γ·DEV (cached per encoding):
        at γ = 0 the model's reconstruction of the input, at the default γ the skull completion expects."""
        chosen, _, gamma, method, options = self._resolve(encoded, gamma, defect_type, method)
        if method not in DECODER_METHODS:
            raise InputError(f"method {method!r} has no decoded skull; choose one of {', '.join(DECODER_METHODS)}")
        return self._decode_cached(encoded, chosen, gamma, method, options)

    def _resolve(self, encoded: EncodedSkull, gamma: float | None, defect_type: str, method: str | None
                 ) -> tuple[str, float, float, str, dict]:
        """The class (and its probability), γ, method and completion options a call uses, checked."""
        chosen, confidence = self.choose_defect_type(encoded, defect_type)
        gamma = self.bundle.default_gamma[chosen] if gamma is None else float(gamma)
        if not np.isfinite(gamma):
            raise InputError(f"gamma must be a finite number, got {gamma}")
        options = self.bundle.completion_options
        method = method or options.get("method", "dev")
        if method not in METHOD_CHOICES:
            raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHOD_CHOICES)}")
        return chosen, confidence, gamma, method, options

    # --- decoding: μ shifted, decoded on the device, kept per encoding ------------------------------
    def _decode_cached(
        self, encoded: EncodedSkull, defect_type: str, gamma: float, method: str, options: dict
    ) -> np.ndarray:
        # At γ = 0 the dev and knn shifts are zero whatever the class: one decode serves them all (and the trust).
        key = ("", 0.0, "dev") if gamma == 0 and method in ("dev", "knn") else (defect_type, round(gamma, 6), method)
        if key in encoded.decode_cache:
            encoded.decode_cache.move_to_end(key)
            return encoded.decode_cache[key]
        z = encoded.mu if key[0] == "" else shifted_latent(self.bundle, encoded, defect_type, gamma, method, options)
        if method == "refine":
            z = refined_latent(self.model, encoded, z, options, self._decode, self._on_device)
        probability = self._decode(z)[0]
        encoded.decode_cache[key] = probability
        while len(encoded.decode_cache) > DECODE_CACHE_SIZE:
            encoded.decode_cache.popitem(last=False)
        return probability

    def _decode(self, z: torch.Tensor) -> np.ndarray:
        def run(latent: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), autocast(self.device, self.precision):
                return bone_probability(self.model.decode(latent)).float().cpu().numpy()

        return self._on_device(run, z)
