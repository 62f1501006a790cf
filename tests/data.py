"""Where tests find fixtures and the shared datasets; dataset-backed tests skip with the expected path."""

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fer2013_test() -> tuple[np.ndarray, np.ndarray]:
    """Return FER2013 test faces and labels, or skip the test saying where the data is expected."""
    from converter.datasets import datasets_root, load_fer2013

    try:
        return load_fer2013("test")
    except FileNotFoundError:
        pytest.skip(f"FER2013 not found at {datasets_root() / 'fer2013' / 'test'} (set AULA_DATASETS)")
