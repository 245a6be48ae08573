"""The OCR engine: page image in, text blocks with recognition confidences out.

RapidOCR runs PP-OCRv4 detection and recognition plus the PP-OCR orientation classifier, all
ONNX files inside the ``rapidocr-onnxruntime`` wheel, so nothing is downloaded at run time.
Detection sees the page scaled to ``DET_SIDE_PX`` on its long side (its cost is then fixed per
page); recognition reads each line cropped from the full-resolution render. Pages that come
out mostly as vertical lines are sideways scans: they are turned 90° both ways and the reading
with more confident text wins. Upside-down lines are turned by the orientation classifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from docpipe.parse.common import tidy_lines

if TYPE_CHECKING:
    import numpy as np

    from docpipe.config import OcrConfig

DET_SIDE_PX = 1280  # long side of the image the text detector sees, pixels
MAX_SIDE_PX = 4000  # renders and images are scaled down to this long side first, pixels
MIN_CONFIDENCE = 0.5  # lines recognised with less confidence are dropped (0..1)
MIN_PAGE_CHARS = 4  # letters and digits a page's reading needs to count; fewer is noise read off a drawing
_SIDEWAYS_SHARE = 0.6  # share of detected lines taller than wide that marks a sideways page
_PARAGRAPH_GAP = 0.8  # vertical gap, in line heights, that still joins two lines into one block


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One recognised line: text, confidence (0..1) and box (left, top, right, bottom, pixels)."""

    text: str
    confidence: float
    box: tuple[float, float, float, float]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class OcrBlock:
    """Lines that read as one paragraph, with their mean confidence weighted by characters."""

    text: str
    confidence: float


def cuda_available(device: str) -> bool:
    """Whether to ask onnxruntime for CUDA: ``device`` allows it and onnxruntime-gpu is installed."""
    if device == "cpu":
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class OcrEngine:
    """A loaded RapidOCR pipeline with bounded threads; ``read(image)`` returns the page's blocks."""

    def __init__(self, config: OcrConfig) -> None:
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # it logs provider choices at WARNING
        import cv2
        from rapidocr_onnxruntime import RapidOCR

        cv2.setNumThreads(config.threads)  # OpenCV's own pool (crops, resizes) stays within the bound too
        cuda = cuda_available(config.device)
        self.cuda = cuda
        self._ocr = RapidOCR(
            intra_op_num_threads=config.threads,
            inter_op_num_threads=1,
            det_use_cuda=cuda,
            cls_use_cuda=cuda,
            rec_use_cuda=cuda,
            det_limit_type="max",
            det_limit_side_len=DET_SIDE_PX,
            max_side_len=MAX_SIDE_PX,
            text_score=MIN_CONFIDENCE,
        )

    def lines(self, image: np.ndarray) -> list[OcrLine]:
        """Recognised lines of an RGB image (height x width x 3, uint8), top to bottom."""
        result, _ = self._ocr(image)
        return [_line(box, text, score) for box, text, score in result or () if str(text).strip()]

    def read(self, image: np.ndarray) -> list[OcrBlock]:
        """The page's text blocks in reading order, a sideways page turned upright first."""
        found = self.lines(image)
        if _sideways(found):
            import numpy as np

            turns = [self.lines(np.ascontiguousarray(np.rot90(image, k))) for k in (1, 3)]
            found = max([found, *turns], key=_weight)
        if sum(char.isalnum() for line in found for char in line.text) < MIN_PAGE_CHARS:
            return []
        return blocks_from_lines(found)


def _line(box: Any, text: str, score: float) -> OcrLine:
    xs = [float(point[0]) for point in box]
    ys = [float(point[1]) for point in box]
    return OcrLine(str(text).strip(), float(score), (min(xs), min(ys), max(xs), max(ys)))


def _sideways(lines: list[OcrLine]) -> bool:
    if len(lines) < 3:
        return False
    tall = sum(1 for line in lines if line.height > 1.5 * (line.box[2] - line.box[0]))
    return tall >= _SIDEWAYS_SHARE * len(lines)


def _weight(lines: list[OcrLine]) -> float:
    """Confident characters: how much a reading of the page is worth."""
    return sum(line.confidence * len(line.text) for line in lines)


def blocks_from_lines(lines: list[OcrLine]) -> list[OcrBlock]:
    """Group lines into paragraphs: a line joins the block whose last line sits just above it
    and overlaps it horizontally; blocks are ordered top to bottom, then left to right."""
    groups: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda item: (item.box[1], item.box[0])):
        for group in reversed(groups):
            last = group[-1]
            gap = line.box[1] - last.box[3]
            overlaps = min(line.box[2], last.box[2]) > max(line.box[0], last.box[0])
            if overlaps and gap <= _PARAGRAPH_GAP * max(last.height, line.height):
                group.append(line)
                break
        else:
            groups.append([line])
    blocks = []
    for group in groups:
        text = tidy_lines("\n".join(line.text for line in group))
        chars = sum(len(line.text) for line in group)
        if text and chars:
            confidence = sum(line.confidence * len(line.text) for line in group) / chars
            blocks.append(OcrBlock(text, round(confidence, 4)))
    return blocks
