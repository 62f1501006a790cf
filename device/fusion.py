"""Late fusion of face, speech and text emotion distributions into one class-level distribution per window.

Per window and modality m with calibrated distribution q_m (over the 7 canonical labels):

    q_m   = p_m^(1/T_m) / sum(p_m^(1/T_m))             temperature calibration (= softmax(logits / T_m))
    c_m   = floor + (1 - floor) * conf(q_m)             conf: 1 - H(q)/ln 7 ("entropy") or (max q - 1/7)/(1 - 1/7)
    e_m   = n_m / (n_m + k_m)                           evidence: n_m faces/segments/utterances, k_m half-saturation
    n_m   = 1 - d_m * q_m(neutral)                      neutral discount d_m in [0, 1]; 1 when d_m = 0
    w_m   = r_m * c_m * e_m * n_m                       r_m: reliability weight; c_m, e_m are 1 when switched off
    P     = sum_m w_m q_m / sum_m w_m                   over the modalities present (linear opinion pool)
    alpha = 1 - 2^(-dt / half_life)                     dt: seconds since the last window that had a distribution
    S     = alpha * P + (1 - alpha) * S_prev            S = P on the first window, or after a gap > N half-lives

The weights r_m and discounts d_m come from the config when it sets them, else from the model manifest's `fusion`
section (chosen on validation splits by `python -m converter evaluate-fusion`), else 1 and 0; see
`with_manifest_settings`. Missing or withheld modalities drop out and the weights renormalise; a window with none
left has no distribution, and the smoother keeps its state for the next one. Only class-level numbers enter or leave
this module.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from device.common.config_loader import StrictModel
from device.contract import COUNT_KEYS, Modality, valence_arousal
from device.contract.labels import LABELS, NUM_LABELS

logger = logging.getLogger(__name__)

# One distribution (label -> prob mapping, or 7 numbers in LABELS order), or a stack of them (one per face,
# segment or utterance), which is calibrated row by row and then averaged.
Distribution = Mapping[str, float] | Sequence[float] | np.ndarray
Distributions = Distribution | Sequence[Mapping[str, float]] | Sequence[Sequence[float]]

__all__ = [
    "FusedWindow",
    "FusionConfig",
    "LateFusion",
    "ModalityEvidence",
    "ModalityTemperatures",
    "ModalityWeights",
    "NeutralDiscounts",
    "WindowInputs",
    "calibrate",
    "confidence",
    "evidence_factor",
    "manifest_fusion",
    "smoothing_alpha",
    "with_manifest_settings",
]


class ModalityWeights(StrictModel):
    """Reliability weight per modality (relative; only their ratios matter)."""

    face: float = Field(1.0, ge=0, description="Weight of the pooled face distribution; 0 ignores faces.")
    speech: float = Field(1.0, ge=0, description="Weight of the speech-emotion distribution; 0 ignores speech.")
    text: float = Field(1.0, ge=0, description="Weight of the text-emotion distribution; 0 ignores text.")


class NeutralDiscounts(StrictModel):
    """Per modality, how much a neutral verdict lowers its weight: weight x (1 - d x P(neutral))."""

    face: float = Field(0.0, ge=0, le=1, description="Face neutral discount; 0 leaves the weight alone.")
    speech: float = Field(0.0, ge=0, le=1, description="Speech neutral discount.")
    text: float = Field(
        0.0, ge=0, le=1, description="Text neutral discount: words that say nothing (mostly neutral) then step aside "
        "for a modality with evidence."
    )


class ModalityTemperatures(StrictModel):
    """Calibration temperature per modality; None takes the model manifest's calibration_temperature."""

    face: float | None = Field(None, gt=0, description="Face temperature override (>1 flattens, <1 sharpens).")
    speech: float | None = Field(None, gt=0, description="Speech temperature override.")
    text: float | None = Field(None, gt=0, description="Text temperature override.")


class ModalityEvidence(StrictModel):
    """Half-saturation count per modality for evidence weighting: with this many items the factor is 0.5."""

    face: float = Field(5.0, gt=0, description="Faces in the group at which the face evidence factor is 0.5.")
    speech: float = Field(1.0, gt=0, description="Voiced segments at which the speech evidence factor is 0.5.")
    text: float = Field(1.0, gt=0, description="Utterances at which the text evidence factor is 0.5.")


class FusionConfig(StrictModel):
    """Late fusion and temporal smoothing of the per-modality distributions."""

    window_s: float = Field(2.0, gt=0, le=60, description="Length of one fusion window in seconds.")
    half_life_s: float = Field(
        6.0,
        ge=0,
        le=3600,
        description="Half-life of the exponential smoothing across windows in seconds: after this long an old "
        "window counts half as much as it did. 0 disables smoothing.",
    )
    reset_after_half_lives: float = Field(
        4.0, gt=0, description="A gap longer than this many half-lives without a distribution restarts smoothing."
    )
    weights: ModalityWeights | None = Field(
        None,
        description="Reliability weight per modality (face, speech, text). None: the model manifest's fusion "
        "weights, else 1 each.",
    )
    neutral_discount: NeutralDiscounts | None = Field(
        None,
        description="Per modality d in [0, 1]: its weight is multiplied by 1 - d x P(neutral), so a modality that "
        "hears nothing but neutral yields to one that carries evidence. None: the manifest's, else 0 each.",
    )
    temperatures: ModalityTemperatures | None = Field(
        None, description="Per-modality calibration temperatures; None or a None entry takes the model manifest's."
    )
    min_faces: int = Field(
        3, ge=1, description="Withhold the face distribution when the group has fewer faces than this (privacy)."
    )
    confidence_weighting: bool = Field(True, description="Scale each modality's weight by its own confidence.")
    confidence_measure: Literal["entropy", "max_prob"] = Field(
        "entropy",
        description="entropy: 1 - H(q)/ln 7; max_prob: (max q - 1/7)/(1 - 1/7). Both are 0 for a uniform "
        "distribution and 1 for a certain one.",
    )
    confidence_floor: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Least confidence factor, so a flat but present modality still counts a little (1 turns "
        "confidence weighting off).",
    )
    evidence_weighting: bool = Field(
        False, description="Scale each modality's weight by n / (n + k) of its count (faces, segments, utterances)."
    )
    evidence_half_counts: ModalityEvidence = Field(
        default_factory=ModalityEvidence, description="Per modality, the count at which the evidence factor is 0.5."
    )

    @model_validator(mode="after")
    def _some_weight(self) -> FusionConfig:
        w = self.weights
        if w is not None and w.face == 0 and w.speech == 0 and w.text == 0:
            raise ValueError("weights: at least one modality needs a weight above 0")
        return self

    @property
    def alpha(self) -> float:
        """Smoothing factor of a window that directly follows the previous one."""
        return smoothing_alpha(self.window_s, self.half_life_s)


def manifest_fusion(folder: Path | None = None) -> dict[str, Any] | None:
    """The model manifest's `fusion` section (weights and neutral discounts chosen on validation), or None."""
    from device.model_store import MANIFEST, models_dir

    path = Path(folder or models_dir()) / MANIFEST
    try:
        section = json.loads(path.read_text()).get("fusion")
    except (OSError, ValueError) as exc:
        logger.warning("fusion settings: cannot read %s (%s); using equal weights", path, exc)
        return None
    return section if isinstance(section, dict) else None


def with_manifest_settings(config: FusionConfig, folder: Path | None = None) -> FusionConfig:
    """Fill the weights and neutral discounts the config leaves unset (None) from the manifest's `fusion` section.

    What the config sets wins; a manifest without the section (or with a bad one) leaves them unset, which
    LateFusion reads as weight 1 and discount 0.
    """
    if config.weights is not None and config.neutral_discount is not None:
        return config
    section = manifest_fusion(folder)
    if not section:
        return config
    update: dict[str, Any] = {}
    try:
        if config.weights is None and section.get("weights") is not None:
            update["weights"] = ModalityWeights.model_validate(section["weights"])
        if config.neutral_discount is None and section.get("neutral_discount") is not None:
            update["neutral_discount"] = NeutralDiscounts.model_validate(section["neutral_discount"])
        resolved = FusionConfig.model_validate({**config.model_dump(), **update})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        logger.warning("fusion settings in the manifest are invalid (%s); using the config's", exc)
        return config
    logger.info("fusion weights %s and neutral discounts %s from the manifest", section.get("weights"),
                section.get("neutral_discount"))
    return resolved


# --- pure functions ---------------------------------------------------------------------------------------------


def calibrate(p: np.ndarray, temperature: float) -> np.ndarray:
    """Return p^(1/T) renormalised along the last axis, which equals softmax(logits / T) when p = softmax(logits)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p = np.asarray(p, np.float64)
    if temperature == 1.0:
        return p / p.sum(axis=-1, keepdims=True)
    # In log space: p^(1/T) underflows for small p and large 1/T; zeros stay zeros (log 0 = -inf, exp -> 0).
    with np.errstate(divide="ignore"):
        z = np.log(p) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence(q: np.ndarray, measure: str = "entropy") -> float:
    """Return a confidence in [0, 1] of one distribution: 0 when uniform, 1 when one label has all the mass."""
    q = np.asarray(q, np.float64)
    if measure == "entropy":
        nz = q[q > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        c = 1.0 - entropy / math.log(q.size)
    elif measure == "max_prob":
        c = (float(q.max()) - 1.0 / q.size) / (1.0 - 1.0 / q.size)
    else:
        raise ValueError(f"unknown confidence measure {measure!r}")
    return min(1.0, max(0.0, c))


def evidence_factor(count: int, half_count: float) -> float:
    """Return n / (n + k): 0 with no evidence, 0.5 at k items, saturating towards 1."""
    return count / (count + half_count) if count > 0 else 0.0


def smoothing_alpha(dt: float, half_life: float) -> float:
    """Return the weight of a new value after dt seconds: 1 - 2^(-dt / half_life); 1 when smoothing is off."""
    if half_life <= 0:
        return 1.0
    return 1.0 - 2.0 ** (-dt / half_life)


def _as_rows(value: Any, name: str) -> np.ndarray | None:
    """Validate one distribution or a stack of them into an (n, 7) array of rows summing to 1; None if empty."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, Sequence) and value and isinstance(value[0], Mapping):
        rows = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping) or set(item) != set(LABELS):
                raise ValueError(f"{name}[{i}] must map exactly the labels {', '.join(LABELS)}")
            rows.append([item[k] for k in LABELS])
        value = rows
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a distribution over {NUM_LABELS} labels or a list of them") from None
    if arr.size == 0:
        return None  # an empty list of segments or utterances: nothing heard
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise ValueError(f"{name} must have {NUM_LABELS} probabilities per row, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    sums = arr.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"{name} has a row that sums to 0")
    # Upstream rounding (the pooler keeps 4 decimals) leaves sums a little off 1.
    return arr / sums


def _as_dict(q: np.ndarray) -> dict[str, float]:
    return {label: float(v) for label, v in zip(LABELS, q, strict=True)}


# --- window input and output ------------------------------------------------------------------------------------


@dataclass
class WindowInputs:
    """What one window saw, per modality: a distribution (or a stack of them) or None when missing or withheld.

    A count of None means "the number of rows given". Pass the group size (faces in the busiest frame) with a
    pooled face distribution, or the face distribution is withheld as a group below min_faces.
    """

    start: float
    end: float
    face: Distributions | None = None
    speech: Distributions | None = None
    text: Distributions | None = None
    faces: int | None = None
    speech_segments: int | None = None
    text_utterances: int | None = None


@dataclass
class FusedWindow:
    """One fused class-level window: the smoothed distribution and what went into it."""

    start: float
    end: float
    distribution: dict[str, float] | None  # smoothed; None when no modality contributed to this window
    raw_distribution: dict[str, float] | None  # this window's fusion before smoothing
    dominant: str | None
    valence: float | None
    arousal: float | None
    modalities: dict[str, dict[str, float] | None]  # calibrated per-modality distributions (None: missing/withheld)
    counts: dict[str, int]
    contributed: tuple[Modality, ...]
    weights: dict[str, float] = field(default_factory=dict)  # normalised weights of the contributing modalities
    face_withheld: bool = False  # the group was below min_faces
    reset: bool = False  # smoothing started afresh at this window

    def to_dict(self) -> dict[str, Any]:
        """Return the fields an EmotionEvent carries, rounded to 4 decimals."""

        def rounded(d: dict[str, float] | None) -> dict[str, float] | None:
            return None if d is None else {k: round(v, 4) for k, v in d.items()}

        return {
            "distribution": rounded(self.distribution),
            "dominant": self.dominant,
            "valence": self.valence,
            "arousal": self.arousal,
            "modalities": {k: rounded(v) for k, v in self.modalities.items()},
            "counts": dict(self.counts),
        }


# --- the fuser --------------------------------------------------------------------------------------------------


class LateFusion:
    """Fuses each window's modalities and smooths the result across windows; one instance per stream."""

    def __init__(self, config: FusionConfig | None = None, temperatures: Mapping[Modality | str, float] | None = None):
        self.config = config or FusionConfig()
        defaults = {Modality(k).value: float(v) for k, v in (temperatures or {}).items()}
        overrides = self.config.temperatures
        self.temperatures: dict[str, float] = {}
        for m in Modality:
            override = getattr(overrides, m.value) if overrides is not None else None
            t = override if override is not None else defaults.get(m.value, 1.0)
            if not t > 0:
                raise ValueError(f"temperature for {m.value} must be positive, got {t}")
            self.temperatures[m.value] = t
        self._state: np.ndarray | None = None
        self._last_end: float | None = None  # end of the last window that had a distribution
        self._prev_end: float | None = None  # end of the last window seen at all
        logger.debug("fusion temperatures %s, alpha %.3f per window", self.temperatures, self.config.alpha)

    def reset(self) -> None:
        """Forget the smoothing state (e.g. after a pause)."""
        self._state = None
        self._last_end = None
        self._prev_end = None

    def _weight(self, m: Modality, q: np.ndarray, count: int) -> float:
        cfg = self.config
        w = getattr(cfg.weights, m.value) if cfg.weights is not None else 1.0
        if cfg.neutral_discount is not None:
            w *= 1.0 - getattr(cfg.neutral_discount, m.value) * float(q[LABELS.index("neutral")])
        if cfg.confidence_weighting:
            w *= cfg.confidence_floor + (1.0 - cfg.confidence_floor) * confidence(q, cfg.confidence_measure)
        if cfg.evidence_weighting:
            w *= evidence_factor(count, getattr(cfg.evidence_half_counts, m.value))
        return w

    def update(self, inputs: WindowInputs) -> FusedWindow:
        """Fuse one window; windows must arrive in time order."""
        if inputs.end <= inputs.start:
            raise ValueError(f"window end {inputs.end} must be after its start {inputs.start}")
        if self._prev_end is not None and inputs.end <= self._prev_end:
            raise ValueError(f"window ending at {inputs.end} does not follow the previous one ({self._prev_end})")
        self._prev_end = inputs.end

        modalities: dict[str, dict[str, float] | None] = {}
        counts: dict[str, int] = {}
        present: list[tuple[Modality, np.ndarray, float]] = []
        face_withheld = False
        for m in Modality:
            rows = _as_rows(getattr(inputs, m.value), m.value)
            given = getattr(inputs, COUNT_KEYS[m])
            count = int(given) if given is not None else (0 if rows is None else len(rows))
            if count < 0:
                raise ValueError(f"{COUNT_KEYS[m]} must not be negative")
            counts[COUNT_KEYS[m]] = count
            if m is Modality.FACE and count < self.config.min_faces and (rows is not None or count > 0):
                # Fewer faces than the minimum describe individuals, not a class: report the count only.
                face_withheld = True
                rows = None
            if rows is None:
                modalities[m.value] = None
                continue
            # Calibrate each row, then average: exact for per-face/segment/utterance rows; for an already pooled
            # face distribution this calibrates the mean, which is close but not identical.
            q = calibrate(rows, self.temperatures[m.value]).mean(axis=0)
            modalities[m.value] = _as_dict(q)
            w = self._weight(m, q, count)
            if w > 0:
                present.append((m, q, w))

        total = sum(w for _, _, w in present)
        if not present or total <= 0:
            # Nothing to say about this window; the smoother keeps its state for the next one.
            return FusedWindow(
                start=inputs.start,
                end=inputs.end,
                distribution=None,
                raw_distribution=None,
                dominant=None,
                valence=None,
                arousal=None,
                modalities=modalities,
                counts=counts,
                contributed=(),
                face_withheld=face_withheld,
            )

        fused = sum(w * q for _, q, w in present) / total
        reset = self._state is None
        if not reset:
            dt = inputs.end - self._last_end
            if self.config.half_life_s > 0 and dt > self.config.reset_after_half_lives * self.config.half_life_s:
                logger.info("fusion gap of %.1f s: smoothing restarts", dt)
                reset = True
        if reset:
            state = fused
        else:
            alpha = smoothing_alpha(inputs.end - self._last_end, self.config.half_life_s)
            state = alpha * fused + (1.0 - alpha) * self._state
        state = state / state.sum()
        self._state = state
        self._last_end = inputs.end

        dist = _as_dict(state)
        valence, arousal = valence_arousal(dist)
        return FusedWindow(
            start=inputs.start,
            end=inputs.end,
            distribution=dist,
            raw_distribution=_as_dict(fused),
            # argmax takes the first label in LABELS order on a tie, so the result is deterministic.
            dominant=LABELS[int(np.argmax(state))],
            valence=valence,
            arousal=arousal,
            modalities=modalities,
            counts=counts,
            contributed=tuple(m for m, _, _ in present),
            weights={m.value: w / total for m, _, w in present},
            face_withheld=face_withheld,
            reset=reset,
        )
