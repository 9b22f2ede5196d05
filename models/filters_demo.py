"""Draw an image and its Sobel / Laplacian responses in one labelled PNG grid.

    python -m models.filters_demo --out grid.png [--image shapes|digits] [--index K]

``shapes`` (the default) is a synthetic 64x64 scene made in NumPy: a bright square, a
mid-grey disc and a diagonal edge on a dark background. ``digits`` is image ``K`` of
scikit-learn's bundled 8x8 digits (no download), upscaled 8x by pixel repetition. The
grid shows the image, Sobel Gx, Sobel Gy, the gradient magnitude, Laplacian-4 and
Laplacian-8, all computed with ``gpukernels.filters`` (so on the current backend).
Signed responses use a diverging colour map centred on 0 (red > 0, blue < 0).

The PNG is written to a temporary file in the output directory and renamed over
``--out``, so a reader never sees a half-written file. Exit codes: 0 on success, 2 with
a one-line ``error: ...`` on stderr for a missing or unwritable output directory, a missing
matplotlib / scikit-learn, or an out-of-range ``--index``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from models.train import atomic_write

SIZE = 64  # side of the synthetic scene and of the upscaled digit
DIGIT_SCALE = SIZE // 8


def synthetic_scene(size: int = SIZE) -> np.ndarray:
    """A float32 (size, size) image in [0, 1]: a diagonal edge, a bright square, a disc."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.where(x + y > 1.4 * size, 0.3, 0.0).astype(np.float32)  # diagonal edge, lower right
    s = size // 8
    img[s : 3 * s + s // 2, s : 3 * s + s // 2] = 1.0  # bright square, upper left
    cy, cx, r = 0.3 * size, 0.7 * size, 0.16 * size
    img[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 0.6  # disc, upper right
    return img


def digit_image(index: int) -> np.ndarray:
    """Digit ``index`` of scikit-learn's 8x8 set as a float32 (64, 64) image in [0, 1]."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - optional dependency

    images = load_digits().images
    if not 0 <= index < len(images):
        raise IndexError(f"--index must be in [0, {len(images) - 1}], got {index}")
    # pixel repetition keeps the digit's square pixels, so the edges the filters find are the real ones
    return np.kron(images[index] / 16.0, np.ones((DIGIT_SCALE, DIGIT_SCALE))).astype(np.float32)


def responses(img: np.ndarray) -> list[tuple[str, np.ndarray, bool]]:
    """``(title, array, signed)`` for the image and each filter response."""
    from gpukernels import filters  # noqa: PLC0415 - keep --help fast

    return [
        ("image", img, False),
        ("Sobel Gx (d/dx, +: dark -> bright rightwards)", filters.sobel_x(img).numpy(), True),
        ("Sobel Gy (d/dy, +: dark -> bright downwards)", filters.sobel_y(img).numpy(), True),
        ("gradient magnitude sqrt(Gx^2 + Gy^2)", filters.gradient_magnitude(img).numpy(), False),
        ("Laplacian, 4 neighbours", filters.laplacian(img, neighbours=4).numpy(), True),
        ("Laplacian, 8 neighbours", filters.laplacian(img, neighbours=8).numpy(), True),
    ]


def draw(panels, title: str, out: str) -> None:
    """Render ``panels`` in a 2x3 grid and save it atomically as PNG at ``out``."""
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    try:
        for ax, (name, arr, signed) in zip(axes.flat, panels):
            if signed:
                lim = float(np.abs(arr).max()) or 1.0  # symmetric range: 0 is the map's neutral colour
                im = ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            else:
                im = ax.imshow(arr, cmap="gray" if name == "image" else "magma", interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(title)
        fig.tight_layout()
        atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=100))
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="PNG file to write (its directory must exist)")
    p.add_argument("--image", choices=["shapes", "digits"], default="shapes",
                   help="synthetic 64x64 scene (default) or one of sklearn's 8x8 digits, upscaled")
    p.add_argument("--index", type=int, default=0, help="which digit with --image digits (default 0)")
    args = p.parse_args(argv)

    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        print(f"error: the output directory {directory} does not exist", file=sys.stderr)
        return 2
    if os.path.isdir(args.out):
        print(f"error: --out {args.out} is a directory; give a file name such as grid.png", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401, PLC0415 - checked before any work is done
    except ImportError:
        print("error: the demo draws with matplotlib, which is not installed: pip install matplotlib",
              file=sys.stderr)
        return 2

    if args.image == "digits":
        try:
            img = digit_image(args.index)
        except ImportError:
            print("error: --image digits needs scikit-learn, which is not installed: "
                  "pip install scikit-learn", file=sys.stderr)
            return 2
        except IndexError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        title = f"sklearn digit #{args.index} (8x8, upscaled x{DIGIT_SCALE})"
    else:
        img = synthetic_scene()
        title = f"synthetic {SIZE}x{SIZE} scene"

    try:
        draw(responses(img), title, args.out)
    except OSError as exc:  # e.g. a read-only directory: one line, not a traceback
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
