"""Still images for `python -m sharding.build --layout images`: the per-image worker.

The paper pretrains on SUN397 by turning each still image into a pseudo-video (a camera pan/zoom
over the image, made at load time by dali_pipelines/images.py). Here an image is only decoded,
rescaled and stored as a JPEG sample with the same members and table columns as a one-frame video
(FORMAT.md, "Image shard sets"), so the builder's machinery (seeded order, shard writing, resume,
errors) is shared unchanged.

The listing (a class is the folder path under ROOT, SUN397's letter folders dropped) is
`sharding.layouts.list_images`.
"""

from __future__ import annotations

import io
import os

# The paper's rescaling (auxiliary_stillimages.py): short side at least 172 and at most 512.
MIN_SHORT_SIDE = 172
MAX_SHORT_SIDE = 512


def image_size(width: int, height: int, min_short: int = MIN_SHORT_SIDE,
               max_short: int = MAX_SHORT_SIDE) -> tuple[int, int]:
    """Stored size: the short side clamped to [min_short, max_short], aspect ratio kept (rounded).

    >>> image_size(100, 80), image_size(640, 480), image_size(1024, 768)
    ((215, 172), (640, 480), (683, 512))
    """
    short = min(width, height)
    target = min(max(short, min_short), max_short)
    if target == short:
        return width, height
    scale = target / short
    w = target if width == short else max(target, round(width * scale))
    h = target if height == short else max(target, round(height * scale))
    return w, h


class ImageError(Exception):
    """An input image that cannot be stored; the message is the reason shown in the manifest."""


def encode_image(path: str, min_short: int, max_short: int, quality: int) -> tuple[bytes, dict]:
    """Decode one image (any Pillow format), apply its EXIF rotation, convert to RGB, rescale,
    encode as baseline JPEG (4:2:0, which DALI's CPU and GPU decoders both read).

    Returns:
        (jpeg bytes, {width, height, src_width, src_height, src_format, src_mode}).

    Raises:
        ImageError: missing, empty, truncated or undecodable file.
    """
    from PIL import Image, ImageOps

    if not os.path.exists(path):
        raise ImageError("file not found")
    if os.path.getsize(path) == 0:
        raise ImageError("empty file")
    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here, not later
            src = {"src_width": im.width, "src_height": im.height, "src_format": im.format,
                   "src_mode": im.mode}
            im = ImageOps.exif_transpose(im)
            if im.mode != "RGB":
                # palette/LA/RGBA/CMYK/16-bit grey: composite alpha on white, then plain RGB
                if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    bg = Image.new("RGB", im.size, (255, 255, 255))
                    bg.paste(im, mask=im.getchannel("A"))
                    im = bg
                else:
                    im = im.convert("RGB")
            w, h = image_size(im.width, im.height, min_short, max_short)
            if (w, h) != im.size:
                im = im.resize((w, h), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot decode image: {e}") from None
    return buf.getvalue(), {"width": w, "height": h, **src}


def process_image(item, label: int, opts: dict) -> dict:
    """The builder's per-item worker for `--layout images` (the result: sharding.media's docstring).

    One sample per image, key = its id, stored like a one-frame video: num_frames 1, one window
    start owned (own_start 0, own_count 1), so shard tables and ownership checks read unchanged.
    """
    try:
        data, info = encode_image(item.path, opts["image_min_side"], opts["image_max_side"],
                                  opts["jpeg_quality"])
        meta = {
            "key": item.video_id, "video_id": item.video_id, "class_name": item.class_name, "label": label,
            "source": item.path, "fps": 0.0, "num_frames": 1, "video_num_frames": 1, "first_frame": 0,
            "segment": 0, "num_segments": 1, "own_start": 0, "own_count": 1, "short": False,
            "media": "image", **info,
        }
        return {"video_id": item.video_id, "samples": [(item.video_id, "jpg", data, meta)],
                "bytes_in": os.path.getsize(item.path), "short": False}
    except ImageError as e:
        return {"video_id": item.video_id, "path": item.path, "error": str(e)}
    except Exception as e:  # an unexpected library failure on one file must not stop the build
        return {"video_id": item.video_id, "path": item.path, "error": f"unexpected {type(e).__name__}: {e}"}
