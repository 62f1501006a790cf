"""The canonical label set shared by every modality, the device and the server."""

LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_LABELS = len(LABELS)
