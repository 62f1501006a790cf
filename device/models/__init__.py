"""Public inference API of the device's models."""

from device.models.face_detector import FaceDetector
from device.models.face_emotion import FaceEmotionModel
from device.models.speech_emotion import SpeechEmotionModel

__all__ = ["FaceDetector", "FaceEmotionModel", "SpeechEmotionModel"]
