"""Still images from a folder, in name order, as a frame source (demos, calibration, tests)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field

from device.common.config_loader import StrictModel
from device.errors import SourceError
from device.sources.base import Frame, FrameSource, Pacer

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ImageFolderConfig(StrictModel):
    """Settings for reading the images in a folder."""

    type: Literal["images"] = Field("images", description="Backend selector.")
    path: Path = Field(description="Folder holding .jpg/.jpeg/.png/.bmp images (not searched recursively).")
    fps: float | None = Field(None, gt=0, description="Images per second; None reads as fast as possible.")
    loop: bool = Field(False, description="Start again from the first image at the end instead of ending.")


class ImageFolder(FrameSource):
    """Images of a folder, sorted by file name, decoded to BGR."""

    type_key = "images"
    Config = ImageFolderConfig

    def __init__(self, config: ImageFolderConfig):
        super().__init__(config)
        self.files: list[Path] = []
        self._pos = 0
        self._decoded_this_pass = 0
        self._pacer: Pacer | None = None

    @property
    def name(self) -> str:
        return f"images:{self.config.path.name}"

    def open(self) -> None:
        folder = self.config.path
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"image folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} images")
        self._pos = 0
        self._decoded_this_pass = 0
        self._wake.clear()
        self._pacer = Pacer(self.config.fps, self._wake)
        logger.info("opened %s: %d images", self.name, len(self.files))

    def read(self) -> Frame | None:
        if self._pacer is None:
            raise SourceError(f"{self.name} is not open; call open() first")
        while True:
            if self._pos >= len(self.files):
                if not self.config.loop:
                    return None
                if not self._decoded_this_pass:
                    # Looping over a folder of only broken files would spin forever.
                    raise SourceError(f"no image in {self.config.path} could be decoded")
                self._pos = 0
                self._decoded_this_pass = 0
            path = self.files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                logger.warning("skipping unreadable image %s", path)
                continue
            self._decoded_this_pass += 1
            self._pacer.wait()
            return self._make_frame(image)

    def close(self) -> None:
        self._pacer = None
