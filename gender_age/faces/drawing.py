"""Drawing face boxes and their labels onto a copy of an image (``--annotate``)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------

COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (80, 230, 80), (230, 80, 230))


def draw_faces(img: Image.Image, labelled: list[tuple]) -> Image.Image:
    """A copy of ``img`` with each (box, text) drawn: a rectangle, its label above it
    (inside it when the box touches the top edge)."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(img.size) / 300))
    try:
        font = ImageFont.load_default(size=max(12, round(max(img.size) / 45)))
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        font = ImageFont.load_default()
    for i, (box, text) in enumerate(labelled):
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([round(v) for v in box], outline=colour, width=width)
        if not text:
            continue
        left, _, right, bottom = draw.textbbox((0, 0), text, font=font)
        x, y = round(box[0]), round(box[1]) - bottom - width
        if y < 0:
            y = round(box[1]) + width
        draw.rectangle((x, y, x + right + 2 * width, y + bottom + width), fill=colour)
        draw.text((x + width, y), text, fill=(0, 0, 0), font=font)
    return out
