"""Write the small image fixtures of tl-backbone's bad-input tests (a few KB in all).

Usage: python make_image_fixtures.py OUT_DIR
"""

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w, h):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // max(w + h - 2, 1)], -1).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rgb = gradient(24, 16)
    Image.fromarray(rgb).save(out / "rgb.png")
    Image.fromarray(rgb).convert("L").save(out / "gray.png")
    rgba = np.concatenate([rgb, np.full((16, 24, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(out / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(out / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(out / "cmyk.jpg", quality=90)
    Image.fromarray(rgb).save(out / "rgb.jpg", quality=90)
    frames = [Image.fromarray(rgb), Image.fromarray(np.zeros_like(rgb))]
    frames[0].save(out / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray(rgb).save(out / "rgb.bmp")
    Image.fromarray(rgb).save(out / "rgb.webp", lossless=True)
    Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)).save(out / "one-pixel.png")
    jpg = (out / "rgb.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    png = bytearray((out / "rgb.png").read_bytes())
    png[60:80] = bytes(20)
    (out / "corrupt.png").write_bytes(bytes(png))
    (out / "empty.png").write_bytes(b"")
    (out / "not-an-image.txt").write_bytes(b"hello, I am text\n")
    # A valid PNG header announcing 30000 x 30000 RGB pixels, with one tiny IDAT:
    # a decoder that trusts the header would try to allocate 2.7 GB.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    (out / "bomb-30000.png").write_bytes(bomb)


if __name__ == "__main__":
    main(sys.argv[1])
