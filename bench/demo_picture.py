"""The README's picture of a run (docs/demo.jpg after `make demo`): the content images, then
the styles, then the outputs in ledger order, side by side at one height.

    python -m bench.demo_picture demo-out docs/demo.jpg
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipeline.bulk import ledger

from .arguments import parser


def picture(run: Path, height: int) -> Image.Image:
    rows = sorted((r for r in ledger.read(run).values() if r["status"] == ledger.DONE),
                  key=lambda r: r["row"])
    if not rows:
        raise SystemExit(f"{run}: no finished job in its ledger")
    inputs = dict.fromkeys([r["content"] for r in rows]
                           + [s for r in rows for s in r["styles"]])
    paths = [Path(p) for p in inputs] + [run / r["output"] for r in rows]
    tiles = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        tiles.append(rgb.resize((round(rgb.width * height / rgb.height), height),
                                Image.Resampling.LANCZOS))
    sheet = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    return sheet


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("run", type=Path, help="a run folder")
    ap.add_argument("out", type=Path, help="the picture (.jpg or .png)")
    ap.add_argument("--height", type=int, default=192)
    args = ap.parse_args()
    picture(args.run, args.height).save(args.out, quality=88)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
