"""Completion: encode once → shift the latent by γ·DEV → decode → implant.

>>> completer = SkullCompleter()                       # bundled model, CUDA when available
>>> encoded = completer.encode(mask, ijk_to_ras)       # validates, maps to the model grid, encodes μ
>>> result = completer.complete(encoded, gamma=1.0)    # a new γ only re-decodes
>>> result.implant, result.completed                   # uint8 arrays on the input's voxel grid
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CancelledError, DeviceError, InputError
from ..extraction.implant import (
    BONE_THRESHOLD,
    decoded_implant_region,
    implant_at_input_resolution,
    near_input_bone,
)
from ..extraction.mirror import check_unilateral, mirror_implant, mirror_skull, quick_midsagittal_plane
from ..extraction.rim import HoleSearch, RimOptions, find_holes_in, fit_implant
from ..model.bundle import ModelBundle, load_bundle
from ..model.networks import bone_probability
from ..options import (
    AUTO,
    DECODER_METHODS,
    DEFAULT_EXTRACTION,
    DEVICE_CHOICES,
    EXTRACTION_CHOICES,
    METHOD_CHOICES,
    PRECISION_CHOICES,
    RIM_EXTRACTIONS,
)
from ..preprocessing.geometry import (
    GridMapping,
    bone_points_ras,
    plan_mapping_from_bone,
    planning_counts,
    refined_mapping,
    skull_frame,
    to_input_grid,
    to_model_grid,
)
from ..preprocessing.validation import validate_mask
from .detection import BY_CLASS_HEAD, BY_DEFECT_POSITION, located_class, region_at
from .regions import COMPLETE
from .trust import Trust, TrustPolicy, UntrustedInputError, check_skull_shell, reconstruction_trust

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
# The choices (devices, precisions, methods, extractions) are in options.py, shared with the GUI and the CLI.
HALF_PRECISION_MIN_DICE = 0.995  # "auto" uses float16 only if its decoded skull agrees this well with float32
DECODE_CACHE_SIZE = 8
UNION_MARGIN_MM = 5.0  # "union": the decoded bone is added this close to the rim's defects (their boxes) only
MIRROR_GRID_MM = 2.0  # grid of the mirror method's expected skull
# Skull sizes (relative to the model's reference size) on which the size-normalised completion was validated.
VALIDATED_SCALE_RANGE = (0.75, 1.25)
UNCERTAINTY_SEED = 20220929  # fixed: the same input gives the same uncertainty map


@dataclass
class EncodedSkull:
    """A skull mapped to the model grid and encoded; reused for every γ."""

    mapping: GridMapping
    defective: np.ndarray  # bool, input grid (i, j, k); the caller's data, never modified
    model_input: np.ndarray  # float32 bone fraction on the model grid
    mu: torch.Tensor  # (1, latent) on the CPU
    logvar: torch.Tensor
    class_probabilities: dict[str, float]
    decode_cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    near_bone_mask: np.ndarray | None = field(default=None, repr=False)  # model voxels near its bone; cached
    mirror: Any = field(default=None, repr=False)  # mirror.MirrorResult of the input; γ-independent, cached
    midsagittal: Any = field(default=None, repr=False)  # mirror.Plane for the rim stage's healthy-side checks
    mirrored: tuple | None = field(default=None, repr=False)  # (input ∪ its mirror image, its grid); cached
    # (class, what decided it) once an "auto" completion has located the defect (detection.py); γ-independent.
    located: tuple[str, str] | None = None
    trust: Trust | None = None  # how well the model reads this input (trust.py)
    check_seconds: dict[str, float] = field(default_factory=dict)  # what the shell check and the trust cost

    def midsagittal_reflection(self) -> np.ndarray | None:
        """The 4×4 RAS reflection about the skull's mid-sagittal plane (the mirror method's when it has run, else a
        quick fit on the model grid; cached), or None when no plane can be found."""
        if self.midsagittal is None:
            self.midsagittal = self.mirror.plane if self.mirror is not None else quick_midsagittal_plane(
                self.model_input, self.mapping.model_to_ras)
        return None if self.midsagittal is None else self.midsagittal.matrix()

    def near_bone(self) -> np.ndarray:
        """Model voxels near the input's bone (implant.near_input_bone): γ-independent, made once."""
        if self.near_bone_mask is None:
            self.near_bone_mask = near_input_bone(self.model_input, self.mapping.grid.spacing_mm)
        return self.near_bone_mask

    @property
    def head_type(self) -> str:
        """The class head's (or nearest centroid's) most likely class."""
        return max(self.class_probabilities, key=self.class_probabilities.get)

    @property
    def detected_type(self) -> str:
        """The detected class: where the defect lies once an "auto" completion has located it, else the head's."""
        return self.located[0] if self.located else self.head_type

    @property
    def detected_by(self) -> str:
        return self.located[1] if self.located else BY_CLASS_HEAD


@dataclass
class CompletionResult:
    """One completion on the input grid. ``completed`` (uint8 0/1) = ``defective`` ∪ ``implant``, made on first use:
    a γ step that only updates the implant's box (the module's slider) does not pay for a whole-volume pass."""

    defective: np.ndarray = field(repr=False)  # the input skull (bool or 0/1), never modified
    implant: np.ndarray  # uint8 0/1 on the input grid
    defect_type: str
    detected_type: str
    confidence: float
    gamma: float
    method: str
    uncertainty: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    implant_volume_ml: float = 0.0
    extraction: str = DEFAULT_EXTRACTION
    message: str = ""  # why the implant is empty or partial (e.g. "no defect found"); "" when all went well
    holes: list = field(default_factory=list)  # rim.Hole per defect found by the rim stage
    # The rim stage's signed fields [(block, lo corner)], > 0 exactly on the implant's voxels: the STL's surfaces.
    implant_field: list | None = field(default=None, repr=False)
    # The rim stage's fields of the defects it found, also when the implant is more than they describe ("union"):
    # where the defect lies decides its class (detection.py).
    defect_fields: list | None = field(default=None, repr=False)
    class_probabilities: dict[str, float] = field(default_factory=dict)  # the model's, for the detection
    detected_by: str = BY_CLASS_HEAD  # what decided detected_type: the class head or the defect's position
    trust: Trust | None = None  # how well the model reads the input (trust.py)
    warnings: list[str] = field(default_factory=list)  # what the user should know before using the implant
    _completed: np.ndarray | None = field(default=None, init=False, repr=False)

    @property
    def completed(self) -> np.ndarray:
        """The completed skull, uint8 0/1 on the input grid (made once, then kept)."""
        if self._completed is None:
            self._completed = self.completed_in(np.zeros(3, int), np.asarray(self.implant.shape))
        return self._completed

    def completed_into(self, out: np.ndarray) -> np.ndarray:
        """The completed skull written into ``out`` (uint8, the input's shape; e.g. an image's own voxels)."""
        if self._completed is not None:
            np.copyto(out, self._completed)
            return out
        defective = self.defective.view(np.uint8) if self.defective.dtype == np.bool_ else self.defective != 0
        return np.bitwise_or(defective, self.implant, out=out)

    def completed_in(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The completed skull inside the input-index box [lo, hi) only (uint8 0/1)."""
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        if self._completed is not None:
            return self._completed[box]
        defective = self.defective[box]
        # A bool array viewed as uint8 (no copy) or-ed with the implant: one pass over the box.
        return (defective.view(np.uint8) if defective.dtype == np.bool_ else defective.astype(np.uint8)) | \
            self.implant[box]


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without CUDA raises :class:`DeviceError`."""
    if device not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        build = "a CPU-only build" if torch.version.cuda is None else f"a CUDA {torch.version.cuda} build"
        raise DeviceError(
            f"CUDA was requested but no CUDA device is available (PyTorch {torch.__version__} is {build}); "
            "choose device 'auto' or 'cpu'"
        )
    return torch.device("cuda" if device in ("auto", "cuda") and cuda else "cpu")


def _report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    logger.debug("%3.0f%% %s", 100 * fraction, message)
    if progress is not None:
        progress(fraction, message)  # may raise CancelledError: nothing has been written yet


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

    @contextlib.contextmanager
    def _autocast(self, precision: str | None = None) -> Iterator[None]:
        if (precision or self.precision) == "float16":
            with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                yield
        else:
            yield

    def _check_half_agreement(self, x: torch.Tensor, mu: torch.Tensor) -> None:
        """For precision "auto": decode this skull in float32 and float16; use float16 from now on if they agree."""
        from ..metrics import dice  # noqa: PLC0415

        def run(inputs: torch.Tensor, latent: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
            with torch.inference_mode():
                reference = bone_probability(self.model.decode(latent)).float().cpu().numpy()[0] > 0.5
                with self._autocast("float16"):
                    half_mu, _ = self.model.encode(inputs)
                    half = bone_probability(self.model.decode(half_mu)).float().cpu().numpy()[0] > 0.5
            return reference, half, half_mu.float().cpu()

        reference, half, half_mu = self._on_device(run, x, mu)
        agreement = dice(half, reference) if reference.any() or half.any() else 1.0
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
        _report(progress, 0.0, "Checking the input skull")
        defective = validate_mask(mask, ijk_to_ras, name=name, label=label)
        _report(progress, 0.1, "Mapping the skull to the model grid")
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
        _report(progress, 0.3, "Encoding")

        def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode(), self._autocast():
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
        """Posterior over the bundle's classes: the softmax of its class head on μ when it has one, else
        from squared distances to the class centroids (unit-variance Gaussians)."""
        names = self.bundle.class_names
        if self.model.classifier is not None:
            with torch.inference_mode():
                logits = self.model.classify(torch.from_numpy(np.asarray(latent, np.float32))[None].to(self.device))
            scores = logits[0].double().cpu().numpy()
        else:
            centroids = self.bundle.centroids
            scores = -0.5 * np.array([np.sum((latent - centroids[n]) ** 2) for n in names], dtype=np.float64)
        weights = np.exp(scores - scores.max())
        return {n: float(w) for n, w in zip(names, weights / weights.sum(), strict=True)}

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
            return _no_defect_is_complete(result)
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
        return _no_defect_is_complete(result)

    def _find_holes_first(self, encoded: EncodedSkull, gamma: float | None, method: str | None,
                          extraction: str | None) -> tuple[tuple, HoleSearch | None]:
        """The resolved choices of a completion with the class head's class, and the holes the rim stage finds in
        its decode (None where the implant is not the rim's: the mirror method, a decode extraction)."""
        resolved = self._resolve(encoded, gamma, AUTO, method)
        chosen, _, gamma, method, options = resolved
        if method == "mirror" or _extraction_for(chosen, method, extraction, options) not in RIM_EXTRACTIONS:
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
        extraction = _extraction_for(chosen, method, extraction, options)
        if method == "mirror":
            _report(progress, 0.4, "Mirroring the healthy side")
            if encoded.mirror is None:
                encoded.mirror = mirror_skull(encoded.defective, encoded.mapping.ijk_to_ras)
            if extraction == "rim":
                probability, expected_mapping = mirrored_expectation(encoded)
        else:
            _report(progress, 0.4, f"Decoding ({chosen}, γ = {gamma:.2f}, {method})")
            probability = self._decode_cached(encoded, chosen, gamma, method, options)
        timings["decode"] = time.perf_counter() - start
        _report(progress, 0.7, "Fitting the implant to the rim" if extraction in RIM_EXTRACTIONS
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
            _report(progress, 0.85, f"Sampling {uncertainty_samples} decodes for the uncertainty map")
            tick = time.perf_counter()
            shifted = self._shift(encoded, chosen, gamma, "dev", options)
            uncertainty = self._uncertainty(encoded, shifted, uncertainty_samples)
            timings["uncertainty"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        _report(progress, 1.0, "Done")
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

    # --- latent arithmetic -----------------------------------------------------------------
    def _shift(self, encoded: EncodedSkull, defect_type: str, gamma: float, method: str, options: dict) -> torch.Tensor:
        mu = encoded.mu
        if method == "knn" and self.bundle.paired_latents:
            k = int(options.get("knn_k", 5))
            direction = torch.from_numpy(self._knn_dev(mu[0].numpy(), defect_type, k))
        else:
            direction = torch.from_numpy(self.bundle.dev[defect_type])
        return mu + gamma * direction[None]

    def _knn_dev(self, latent: np.ndarray, defect_type: str, k: int) -> np.ndarray:
        """Mean complete-minus-defective latent difference of the k nearest paired training cases of this type."""
        table = self.bundle.paired_latents
        same_type = table["type_index"] == self.bundle.defect_classes.index(defect_type)
        if not same_type.any():
            return self.bundle.dev[defect_type]
        defective, deltas = table["defective"][same_type], table["delta"][same_type]
        nearest = np.argsort(np.sum((defective - latent) ** 2, axis=1))[:k]
        return deltas[nearest].mean(axis=0).astype(np.float32)

    def _decode_cached(
        self, encoded: EncodedSkull, defect_type: str, gamma: float, method: str, options: dict
    ) -> np.ndarray:
        # At γ = 0 the dev and knn shifts are zero whatever the class: one decode serves them all (and the trust).
        key = ("", 0.0, "dev") if gamma == 0 and method in ("dev", "knn") else (defect_type, round(gamma, 6), method)
        if key in encoded.decode_cache:
            encoded.decode_cache.move_to_end(key)
            return encoded.decode_cache[key]
        z = encoded.mu if key[0] == "" else self._shift(encoded, defect_type, gamma, method, options)
        if method == "refine":
            z = self._refine(encoded, z, options)
        probability = self._decode(z)[0]
        encoded.decode_cache[key] = probability
        while len(encoded.decode_cache) > DECODE_CACHE_SIZE:
            encoded.decode_cache.popitem(last=False)
        return probability

    def _decode(self, z: torch.Tensor) -> np.ndarray:
        def run(latent: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), self._autocast():
                return bone_probability(self.model.decode(latent)).float().cpu().numpy()

        return self._on_device(run, z)

    def _refine(self, encoded: EncodedSkull, z0: torch.Tensor, options: dict) -> torch.Tensor:
        """Gradient steps on z so the decoded skull matches the input's intact bone.

        The region where the first decode adds bone (the presumed defect) is left free; elsewhere the
        decoded skull is pulled onto the input. A Gaussian prior on z keeps the latent plausible.
        """
        steps = int(options.get("refine_steps", 30))
        learning_rate = float(options.get("refine_lr", 0.05))
        prior_weight = float(options.get("refine_prior_weight", 1e-3))
        spacing = encoded.mapping.grid.spacing_mm
        free = decoded_implant_region(self._decode(z0)[0], encoded.model_input, spacing, encoded.near_bone())
        weight = torch.from_numpy((~free).astype(np.float32))[None]
        target = torch.from_numpy(encoded.model_input)[None]

        def run(latent: torch.Tensor, weights: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            latent = latent.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([latent], lr=learning_rate)
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                logits = self.model.decode(latent)
                log_p = torch.log_softmax(logits.float(), dim=1)
                # Weighted cross-entropy against the input's bone fraction.
                loss_map = -(goal * log_p[:, 1] + (1 - goal) * log_p[:, 0])
                loss = (weights * loss_map).sum() / weights.sum().clamp_min(1.0)
                loss = loss + prior_weight * 0.5 * (latent**2).sum()
                loss.backward()
                optimiser.step()
            return latent.detach().cpu()

        with torch.enable_grad():
            return self._on_device(run, z0, weight, target)

    def _uncertainty(self, encoded: EncodedSkull, z: torch.Tensor, samples: int) -> np.ndarray:
        """Voxelwise disagreement of decodes from the encoder's posterior: 4·p·(1−p), p = bone vote share."""
        generator = torch.Generator().manual_seed(UNCERTAINTY_SEED)
        std = torch.exp(0.5 * encoded.logvar)
        votes = np.zeros(encoded.mapping.grid.shape, np.float32)
        for _ in range(samples):
            noise = torch.randn(std.shape, generator=generator)
            votes += self._decode(z + noise * std)[0] > 0.5
        share = votes / samples
        disagreement = 4.0 * share * (1.0 - share)
        block, lo = to_input_grid(disagreement, encoded.mapping)
        full = np.zeros(encoded.mapping.input_shape, np.float32, order="F")
        hi = lo + np.asarray(block.shape)
        full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = block
        return full


def _extraction_for(chosen: str, method: str, extraction: str | None, options: dict) -> str:
    """How the implant of a completion with class ``chosen`` and ``method`` is cut: ``extraction`` if given, else the
    bundle's choice for the class; checked, and adjusted where a choice cannot apply."""
    extraction = extraction or options.get("extraction_by_class", {}).get(chosen) or options.get(
        "extraction", DEFAULT_EXTRACTION)
    if extraction not in EXTRACTION_CHOICES:
        raise InputError(f"unknown extraction {extraction!r}; choose one of {', '.join(EXTRACTION_CHOICES)}")
    if extraction in RIM_EXTRACTIONS and chosen == "facial":
        # Rays from the cranial centre do not parameterise the face (several layers of bone on each ray).
        logger.debug("facial defect: the implant is the decoded bone (the rim fit is for the cranial vault)")
        return "decode"
    if extraction == "union" and method == "mirror":
        return "rim"  # the mirrored skull is the patient's own bone: nothing for a decode to add
    return extraction


def _no_defect_is_complete(result: CompletionResult) -> CompletionResult:
    """A completion that found no defect (no hole, no implant) says so in its detected class too: "complete", decided
    by the holes found (none), whatever the class head proposed. Only the result says it: the encoding keeps its
    detection, as a later γ may find the hole."""
    if not result.holes and not np.any(result.implant):
        result.detected_type, result.detected_by = COMPLETE, BY_DEFECT_POSITION
    return result


def completion_warnings(encoded: EncodedSkull, defect_type: str) -> list[str]:
    """What the user should know about a completion before using its implant (summary ``warnings``)."""
    warnings = []
    if encoded.trust is not None and encoded.trust.status != "ok":
        warnings.append(encoded.trust.message())
    low, high = VALIDATED_SCALE_RANGE
    if not low <= encoded.mapping.scale <= high:
        warnings.append(f"the skull is {encoded.mapping.scale:.2f} times the model's reference size, outside the "
                        f"range it was validated on ({low}–{high}); check the implant with particular care")
    if defect_type == "facial":
        warnings.append("facial defect: the model's facial implants are rough (decoded bone, no rim fit); use this "
                        "one as a starting point only and check it slice by slice")
    return warnings


def mirrored_expectation(encoded: EncodedSkull) -> tuple[np.ndarray, GridMapping]:
    """The expected skull of the mirror method: the input and its mirror image (cached), on the model grid's
    placement refined to :data:`MIRROR_GRID_MM` (it is the patient's own bone: no need to blur it to the model's).

    :raises InputError: when the defect crosses the mid-sagittal plane (its mirror image is missing too).
    """
    if encoded.mirrored is None:
        bone = encoded.defective
        if encoded.mirror is None:
            encoded.mirror = mirror_skull(bone, encoded.mapping.ijk_to_ras)
        check_unilateral(bone, encoded.mapping.ijk_to_ras, encoded.mirror.plane)
        fine = refined_mapping(encoded.mapping, MIRROR_GRID_MM)
        encoded.mirrored = (to_model_grid(bone | encoded.mirror.mirrored.astype(bool), fine), fine)
    return encoded.mirrored


def extract_implant(
    encoded: EncodedSkull, probability: np.ndarray, extraction: str, options: dict, smoothing: bool = True,
    expected_mapping: GridMapping | None = None, defect_type: str = "", search: HoleSearch | None = None,
) -> tuple[np.ndarray, str, list, list | None]:
    """The implant (uint8, input grid) cut from an expected skull, a message when it is empty or partial, the holes
    and the rim stage's signed fields [(block, lo)] when there are any (for "union": of its rim part only).

    ``probability``: the expected skull on the model grid (or on ``expected_mapping``'s grid, for "rim").
    ``search``: the rim stage's holes already found in this ``probability`` (not searched again).
    ``defect_type``: picks the decode extraction's bone threshold from ``options["decode_threshold"]`` (per class;
    the decoder blurs thin facial bone below 0.5, so the bundle may lower it there).
    """
    if extraction == "decode":
        implant = decoded_implant(encoded, probability, options, smoothing, defect_type)
        message = "" if implant.any() else "no defect found: the decoded skull adds no bone away from the input's bone"
        return implant, message, [], None
    fit = fit_implant(probability, encoded.defective, expected_mapping or encoded.mapping,
                      RimOptions.from_dict(options.get("rim")), encoded.midsagittal_reflection(), search)
    if extraction == "rim":
        return fit.implant, fit.message, fit.holes, fit.fields or None
    if not fit.fields:
        return fit.implant, fit.message, fit.holes, None  # the rim found no defect: the decode has nothing to add
    # Near each defect the rim found (its box, grown by UNION_MARGIN_MM), the decoded bone is or-ed into the rim's
    # implant (in place, on that box only: no second full-size pass). One box per defect, not one around all of
    # them: decoded bone between two holes, where the input has its bone, is no implant.
    margin = np.ceil(UNION_MARGIN_MM / encoded.mapping.input_spacing).astype(int)
    implant = fit.implant
    for block, corner in fit.fields:
        box = (corner - margin, corner + np.asarray(block.shape) + margin)
        implant = decoded_implant(encoded, probability, options, smoothing, defect_type, out=implant, within=box)
    return implant, fit.message, fit.holes, fit.fields


def decoded_implant(encoded: EncodedSkull, probability: np.ndarray, options: dict, smoothing: bool = True,
                    defect_type: str = "", out: np.ndarray | None = None,
                    within: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Decoded minus input bone at the input's resolution (implant.py), with the class's bone threshold; ``out``:
    an implant (uint8, input grid) to add it to; ``within``: an input-index box (lo, hi) to confine it to."""
    threshold = float(options.get("decode_threshold", {}).get(defect_type, BONE_THRESHOLD))
    region = decoded_implant_region(probability, encoded.model_input, encoded.mapping.grid.spacing_mm,
                            encoded.near_bone(), threshold)
    return implant_at_input_resolution(probability, region, encoded.defective, encoded.mapping, smoothing, threshold,
                                       out, within)


def check_cancel(cancelled: Callable[[], bool]) -> ProgressCallback:
    """A progress callback that raises :class:`CancelledError` once ``cancelled()`` is true."""

    def callback(fraction: float, message: str) -> None:
        if cancelled():
            raise CancelledError("cancelled by the user; nothing was changed")

    return callback
