"""python -m resnet_jax.evaluate --weights=SOURCE DATA | --tfds=NAME:SPLIT [options]

Top-1, top-5 and the loss of any weights on labelled images: a folder of class folders
(DATA/CLASS/IMAGE, as torchvision's ImageFolder reads it) or a prepared TFDS split read
without TensorFlow. --weights takes a tag (resnet50.torchvision_v2), a converted
directory, a training workdir (its EMA weights when the run kept them; --no-ema for the
live ones) or an export artifact, and brings its own preprocessing unless --image-size,
--crop-pct, --resize or --interpolation replace it. Classes are matched by name
(ImageNet-1k weights: by WordNet id, n01440764, as well).

A progress bar shows on stderr when it is a terminal. A file that does not decode is
skipped and named; the metrics cover the others. Grayscale and CMYK images are converted
to the model's channels, as the trainer converts them. Exit status: 0, every image
scored; 2, results printed but some images were skipped; 1, an error (one line).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from resnet_jax import evaluation, user_errors
from resnet_jax.preprocessing import Preprocessing

SKIPPED_STATUS = 2


def _parser() -> user_errors.Parser:
    parser = user_errors.Parser(
        prog="python -m resnet_jax.evaluate",
        description=__doc__.split("\n\n", 1)[1].split("\n\n")[0],
        epilog=__doc__.split("\n\n")[2],
    )
    parser.add_argument("data", nargs="?", metavar="DATA", help="a folder of class folders")
    parser.add_argument(
        "--weights", required=True, metavar="SOURCE", help="tag, converted dir, workdir or artifact"
    )
    parser.add_argument("--tfds", metavar="NAME:SPLIT", help="a prepared TFDS split instead of DATA")
    parser.add_argument("--data-dir", help="TFDS's data_dir for --tfds (default ~/tensorflow_datasets)")
    parser.add_argument("--model", help="the model of a bare weights tag (e.g. resnet50)")
    parser.add_argument("--no-ema", action="store_true", help="a workdir's live weights, not its EMA")
    parser.add_argument("--image-size", type=int, help="the crop (model input) size")
    parser.add_argument("--crop-pct", type=float, help="resize the shorter side to image-size / crop-pct")
    parser.add_argument("--resize", type=int, help="resize the shorter side to this")
    parser.add_argument("--interpolation", help="bilinear or bicubic")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step over all devices")
    parser.add_argument("--workers", type=int, default=0, help="reading threads (0: one per CPU)")
    parser.add_argument("--per-class", action="store_true", help="list the 10 worst classes; a confusion PNG")
    parser.add_argument(
        "--confusion-matrix", default="confusion_matrix.png", metavar="PNG",
        help="where --per-class draws it (100 classes or fewer)",
    )  # fmt: skip
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="the results as JSON: to PATH, or stdout without one",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.workers < 0:
            raise ValueError(f"--workers={args.workers}: must be >= 0")
        if args.json not in (None, "-") and os.path.isdir(args.json):
            raise ValueError(f"--json={args.json} is a directory: name a file")
        result = evaluation.evaluate_weights(
            args.weights, args.data, tfds=args.tfds, data_dir=args.data_dir, model=args.model,
            ema=False if args.no_ema else None, image_size=args.image_size, crop_pct=args.crop_pct,
            resize=args.resize, interpolation=args.interpolation, batch_size=args.batch_size,
            workers=args.workers or None, per_class=args.per_class,
        )  # fmt: skip
        _report(result, args)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))
    if result["skipped"]:
        print(
            f"{len(result['skipped'])} images skipped (named above): exit status {SKIPPED_STATUS}",
            file=sys.stderr,
        )
        sys.exit(SKIPPED_STATUS)


def _report(result: dict[str, Any], args: Any) -> None:
    if args.json == "-":
        print(json.dumps(result, indent=1))
        return
    print(f"weights: {result['description']}")
    print(f"preprocessing: {Preprocessing.from_dict(result['preprocessing']).describe()}")
    print(f"data: {result['data']}, classes matched by {result['matched_by']}")
    if args.per_class:
        width = max(len(r["class"]) for r in result["per_class"][: evaluation.WORST_SHOWN])
        print(f"worst {min(evaluation.WORST_SHOWN, len(result['per_class']))} classes by top-1:")
        for r in result["per_class"][: evaluation.WORST_SHOWN]:
            top1 = f"{r['top1']:7.2f}%" if r["top1"] is not None else "     n/a"
            print(f"  {r['class']:{width}}  {top1}  of {r['images']:,}")
        if len(result["class_names"]) <= evaluation.CONFUSION_MAX_CLASSES:
            plot_confusion(result, args.confusion_matrix)
            print(f"confusion matrix: {os.path.abspath(args.confusion_matrix)}")
    print(
        f"top-1 {result['top1']:.3f}%  top-5 {result['top5']:.3f}%  loss {result['loss']:.4f}  "
        f"images {result['images']:,}  {result['images_per_second']:,.1f} images/s on {result['devices']} "
        "device(s)"
    )
    if args.json:
        _write_atomically(args.json, json.dumps(result, indent=1) + "\n")
        print(f"results: {os.path.abspath(args.json)}")


def _write_atomically(path: str, text: str) -> None:
    """``text`` into ``path``, replacing it only once written in full."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_confusion(result: dict[str, Any], path: str) -> None:
    """A PNG of ``result['confusion']`` (``evaluate_weights(per_class=True)``), rows
    normalised to the share of each true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(result["confusion"], np.float64)
    names = list(result["class_names"])
    columns = [*names, "other"] if counts[:, -1].any() else names
    counts = counts[:, : len(columns)]
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(names)
    side = min(4 + 0.28 * k, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for (i, j), v in np.ndenumerate(counts):
            if v:
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"top-1 {result['top1']:.2f}% on {result['images']:,} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
