"""The speech-emotion baseline to beat: MFCC statistics and an RBF support-vector machine (scikit-learn)."""

from __future__ import annotations

import numpy as np

N_MFCC = 40


def mfcc_stats(wave: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over time of 40 MFCCs and their deltas (160 numbers)."""
    import librosa

    m = librosa.feature.mfcc(y=wave, sr=16000, n_mfcc=N_MFCC, n_fft=400, hop_length=160)
    d = librosa.feature.delta(m)
    return np.concatenate([m.mean(1), m.std(1), d.mean(1), d.std(1)]).astype(np.float32)


def fit_svm(x: np.ndarray, y: np.ndarray, c: float = 10.0):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf", gamma="scale")).fit(x, y)
