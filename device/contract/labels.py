"""The canonical label set shared by every modality, the device and the server, and each label's valence and arousal."""

LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_LABELS = len(LABELS)

# Valence and arousal per label, on [-1, 1], after Russell's circumplex (fixed and documented).
VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "angry": (-0.6, 0.7),
    "disgust": (-0.7, 0.3),
    "fear": (-0.7, 0.6),
    "happy": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "sad": (-0.7, -0.4),
    "surprise": (0.3, 0.8),
}


def valence_arousal(distribution: dict[str, float]) -> tuple[float, float]:
    """Return the probability-weighted valence and arousal of a distribution."""
    v = sum(p * VALENCE_AROUSAL[k][0] for k, p in distribution.items())
    a = sum(p * VALENCE_AROUSAL[k][1] for k, p in distribution.items())
    return round(v, 4), round(a, 4)
