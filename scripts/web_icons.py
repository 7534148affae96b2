"""Draw the web app's icons (web/icons/*.png) with Pillow: a lesion-like dot in a square guide.

    .venv/bin/python scripts/web_icons.py

Rerun only to change the icons; the PNGs are committed.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
BRAND, PAPER, LESION = (18, 53, 91), (246, 247, 249), (122, 72, 48)


def icon(size: int, safe: float) -> Image.Image:
    """A square icon; safe is the share of the side kept clear of the edge (maskable icons need 0.1 or more)."""
    scale = 4  # draw large and downsample, for smooth edges without an antialiasing option
    s = size * scale
    im = Image.new("RGB", (s, s), BRAND)
    d = ImageDraw.Draw(im)
    m = int(s * (safe + 0.08))
    w = max(2, s // 28)
    corner = (s - 2 * m) // 4
    for x, y, dx, dy in ((m, m, 1, 1), (s - m, m, -1, 1), (m, s - m, 1, -1), (s - m, s - m, -1, -1)):
        d.line([(x, y), (x + dx * corner, y)], fill=PAPER, width=w)
        d.line([(x, y), (x, y + dy * corner)], fill=PAPER, width=w)
    r = (s - 2 * m) * 0.28
    c = s / 2
    d.ellipse([c - r * 1.05, c - r, c + r * 1.05, c + r], fill=LESION)
    d.ellipse([c - r * 0.45, c - r * 0.5, c + r * 0.35, c + r * 0.3], fill=(84, 46, 32))
    return im.resize((size, size), Image.LANCZOS)


def main() -> None:
    out = ROOT / "web" / "icons"
    out.mkdir(parents=True, exist_ok=True)
    icon(192, 0.0).save(out / "icon-192.png", optimize=True)
    icon(512, 0.0).save(out / "icon-512.png", optimize=True)
    icon(512, 0.1).save(out / "icon-maskable-512.png", optimize=True)
    print(f"wrote 3 icons to {out}")


if __name__ == "__main__":
    main()
