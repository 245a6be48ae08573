"""Images as documents: PNG, JPEG, TIFF (each frame a page) and WebP, read by OCR.

Pillow decodes (lazily: only the frame being read is in memory); each frame is read in the
forked OCR helper under the per-page time limit, like a scanned PDF page.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from docpipe.errors import CorruptDocument, EmptyDocument, TooLarge
from docpipe.parse.common import describe, truncate_warnings
from docpipe.parse.ocr import MAX_SIDE_PX
from docpipe.parse.ocr_pages import read_pages
from docpipe.types import Block, ParsedDocument

if TYPE_CHECKING:
    import numpy as np

    from docpipe.config import OcrConfig

MAX_PIXELS = 200_000_000  # pixels per frame; larger images fail as too large (a decompression bomb guard)


def _open(data: bytes) -> Image.Image:
    """The decoded image header, or the permanent error that says why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.size  # noqa: B018 - the header is parsed lazily
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise TooLarge(f"image is too large: {describe(err)}") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise CorruptDocument(f"cannot open image: {describe(err)}") from err
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise TooLarge(f"image is {width}x{height} pixels, more than the limit of {MAX_PIXELS}")
    if not width or not height:
        raise EmptyDocument("image has no pixels")
    return image


def render_frame(image: Image.Image, page: int) -> np.ndarray:
    """Frame ``page`` (1-based) as RGB, scaled down to ``MAX_SIDE_PX`` on its long side."""
    import numpy as np

    image.seek(page - 1)
    frame = image.convert("RGB")
    frame.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
    return np.asarray(frame, dtype=np.uint8)


def parse_image(
    data: bytes, *, max_pages: int, pages: tuple[int, int] | None = None, ocr: OcrConfig | None = None
) -> ParsedDocument:
    """The text OCR reads on each frame; an image has no text layer, so with OCR off it has no blocks.

    ``pages`` (first, last; 1-based, inclusive) reads only those frames, for a long TIFF split across
    workers (``parsed_to`` then says where the range ended); ``page_count`` is always all frames.
    """
    image = _open(data)
    page_count = int(getattr(image, "n_frames", 1) or 1)
    if page_count > max_pages:
        raise TooLarge(f"image has {page_count} frames, more than the limit of {max_pages}")
    first, last = pages or (1, page_count)
    last = min(last, page_count)
    found: list[str] = []
    blocks: list[Block] = []
    if ocr is None or ocr.mode == "off":
        found.append("OCR is off: an image has no text layer")
    else:
        numbers = list(range(max(first, 1), min(last, ocr.max_pages) + 1))
        for result in read_pages(lambda page: render_frame(image, page), numbers, ocr):
            if result.error:
                found.append(result.error)
            blocks.extend(Block(text, result.page, ocr_confidence=conf) for text, conf in result.blocks)
        if not blocks:
            found.append(f"no text found, even after OCR of {len(numbers)} pages")
    parsed_to = last if last < page_count else None
    return ParsedDocument(
        blocks=blocks, page_count=page_count, title=None, warnings=truncate_warnings(found), parsed_to=parsed_to
    )
