"""Classify images in one call: images in, the top classes with their probabilities out.

``Classifier`` holds a model, its evaluation preprocessing and its class names, from any
source ``resnet_jax.sources`` resolves or from an export artifact; ``classify`` is the
one-call form. ``python -m resnet_jax.predict`` is the command line over them::

    import resnet_jax
    resnet_jax.classify("dog.jpg", weights="resnet50.torchvision_v2")
    # [(name, probability), ...]: the top 5, most probable first
    classifier = resnet_jax.Classifier.load("runs/flowers")  # load once, call many times
    classifier(["a.jpg", "b.png", pil_image, uint8_array], top=3)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from resnet_jax import sources
from resnet_jax.preprocessing import (
    IMAGE_EXTENSIONS,
    Preprocessing,
    center_crop_offsets,
    decode_image,
    image_channels,
    resize,
)


def read_image(path: str, channels: int | None = None) -> np.ndarray:
    """The decoded uint8 (H, W, C) image of a file, converted to ``channels`` as the
    trainer's input pipeline converts it (``decode_image``); without ``channels``, C = 1
    for grayscale files, else 3. Raises ``ValueError`` naming the file when it is missing
    or not an image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: a folder; pass it alone to classify its images") from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    try:
        found = image_channels(data)  # a file that is no image is named as such first
        return decode_image(data, channels or found)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def image_files(paths: Sequence[str]) -> list[str]:
    """The files named, and the image files (``IMAGE_EXTENSIONS``, not hidden) under the
    folders named, sorted per folder. A missing path raises ``FileNotFoundError``, a
    folder without images ``ValueError``."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, n)
                for root, _, names in os.walk(path)
                for n in names
                if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
            )
            if not found:
                raise ValueError(f"{path}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or directory")
        else:
            files.append(path)
    return files


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized (antialiased) to cover ``size`` = (H, W), keeping its aspect,
    then centre-cropped to it."""
    h, w = image.shape[:2]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], int(h * scale + 0.5)), max(size[1], int(w * scale + 0.5))
    image = resize(image, (nh, nw))
    top, left = center_crop_offsets(nh, nw, size)
    return image[top : top + size[0], left : left + size[1]]


def raw_input_for(image: np.ndarray, preprocessing: Preprocessing, raw_size: tuple[int, int]) -> np.ndarray:
    """The uint8 ``raw_size`` input of a raw-input artifact for ``image`` (any size).

    The artifact's graph resizes its input to ``preprocessing``'s resize size and centre-
    crops it. Where that resize is the identity at ``raw_size`` (the default export: a
    square of the resize size, or of the crop for a run that resizes without cropping),
    the crop is made here, exactly as ``preprocessing.crop`` makes it, and placed where
    the graph's centre crop takes it: the artifact then scores every image, square or
    not, as the weights' own source does. For another ``raw_size`` the image is resized
    to cover it and centre-cropped (close, not equal, for images of another shape)."""
    prep = preprocessing
    if tuple(raw_size) != prep.identity_size:
        return image if image.shape[:2] == tuple(raw_size) else _fit(image, raw_size)
    crop = prep.crop(image)
    canvas = np.zeros((*raw_size, crop.shape[-1]), np.uint8)
    top, left = center_crop_offsets(*raw_size, prep.size)
    canvas[top : top + prep.size[0], left : left + prep.size[1]] = crop
    return canvas


class Classifier:
    """A model with its preprocessing and class names; call it on images.

    ``forward`` maps a batch of model inputs to class probabilities. Model inputs are the
    normalised float32 crops of ``preprocessing``, or, for a raw-input export artifact
    (``raw_size`` set), the uint8 images themselves at that (height, width).
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], Any],
        preprocessing: Preprocessing,
        class_names: Sequence[str],
        raw_size: tuple[int, int] | None = None,
        description: str = "",
    ):
        self.forward, self.preprocessing = forward, preprocessing
        self.class_names, self.raw_size, self.description = list(class_names), raw_size, description

    @classmethod
    def from_model(
        cls, model: Any, variables: Any, preprocessing: Preprocessing, class_names: Sequence[str], **kw: Any
    ) -> Classifier:
        """A Flax model and its variables (from ``create_model(name, weights=...)``, a
        workdir or your own training)."""
        import jax

        variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
        apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).astype("float32")))
        return cls(lambda x: apply(variables, x), preprocessing, class_names, **kw)

    @classmethod
    def load(cls, source: str, model: str | None = None, ema: bool | None = None) -> Classifier:
        """From a weights tag, a converted directory, a workdir or an export artifact (see
        ``resnet_jax.sources``); ``model`` names the architecture of a bare tag."""
        if os.path.isfile(source) and (source.endswith(".jaxexport") or os.path.exists(source + ".json")):
            return cls.from_artifact(source)
        loaded = sources.resolve(source, model=model, ema=ema)
        return cls.from_model(
            loaded.model,
            loaded.variables,
            loaded.preprocessing,
            loaded.class_names,
            description=loaded.description,
        )

    @classmethod
    def from_artifact(cls, path: str) -> Classifier:
        """A ``python -m resnet_jax.export`` artifact and the ``.json`` beside it."""
        from resnet_jax import export

        try:
            with open(path + ".json") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: an export artifact needs its .json beside it ({e})") from None
        if "preprocessing" not in meta or "class_names" not in meta:
            raise ValueError(f"{path}.json names no preprocessing or classes (an older export): export again")
        exported = export.load_artifact(path)
        raw = meta["input"]["dtype"] == "uint8"
        logits = meta["output"].get("meaning") == "logits"

        def forward(x: np.ndarray) -> np.ndarray:
            out = np.asarray(exported.call(x), np.float64)
            if logits:
                out = np.exp(out - out.max(-1, keepdims=True))
                out /= out.sum(-1, keepdims=True)
            return out.astype(np.float32)

        raw_size = tuple(meta["input"]["shape"][1:3]) if raw else None
        return cls(
            forward, Preprocessing.from_dict(meta["preprocessing"]), meta["class_names"], raw_size, path
        )

    def input(self, image: Any) -> np.ndarray:
        """The model input of one image (a path, a PIL image or a uint8 array)."""
        name = os.fspath(image) if isinstance(image, str | os.PathLike) else None
        pixels = read_image(name, self.preprocessing.channels) if name is not None else image
        try:
            if self.raw_size is None:
                return self.preprocessing(pixels)
            pixels = self.preprocessing.checked(pixels)
            return raw_input_for(pixels, self.preprocessing, self.raw_size)
        except ValueError as e:
            raise ValueError(f"{name}: {e}" if name else str(e)) from None

    def inputs(self, images: Sequence[Any]) -> np.ndarray:
        """The model input of ``images`` (paths, PIL images or uint8 arrays)."""
        return np.stack([self.input(image) for image in images])

    def probabilities(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """float32 (N, classes): each image's class probabilities."""
        out = [
            self.forward_inputs(self.inputs(images[lo : lo + batch_size]))
            for lo in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def forward_inputs(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, classes) of model inputs ``x``, padded to a power of two on the
        way, so that a folder's last, short batch compiles no new shape."""
        n = len(x)
        padded = np.concatenate([x, np.zeros(((1 << (n - 1).bit_length()) - n, *x.shape[1:]), x.dtype)])
        return np.asarray(self.forward(padded))[:n]

    @staticmethod
    def top_indices(probabilities: np.ndarray, k: int = 5) -> np.ndarray:
        """(N, k): each row's ``k`` most probable class indices, most probable first."""
        return np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]

    def top(self, probabilities: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(name, probability)`` of each row, most probable first."""
        order = self.top_indices(probabilities, k)
        return [[(self.class_names[i], float(p[i])) for i in row] for p, row in zip(probabilities, order)]

    def __call__(self, images: Any, top: int = 5, batch_size: int = 32) -> Any:
        """The ``top`` classes of each image as ``[(name, probability), ...]``.

        A single image (a path, a PIL image or one array) gives its list, a sequence a
        list of them. A folder, or a sequence of paths with folders among them, gives a
        dict ``{file: list}`` over the files named and the image files in the folders;
        there a file that does not decode is skipped with a warning naming it, as
        ``python -m resnet_jax.predict`` skips it. A file named directly that is missing
        raises ``FileNotFoundError``, one that is not an image ``ValueError``.
        """
        if top < 1 or batch_size < 1:
            raise ValueError(f"top={top}, batch_size={batch_size}: both must be >= 1")
        paths = [images] if isinstance(images, str | os.PathLike) else images
        if isinstance(paths, Sequence) and any(
            isinstance(p, str | os.PathLike) and os.path.isdir(p) for p in paths
        ):
            if not all(isinstance(p, str | os.PathLike) for p in paths):
                raise ValueError("with a folder among the images, every image must be a path")
            files = image_files([os.fspath(p) for p in paths])
            found = {}
            for lo in range(0, len(files), batch_size):
                good, inputs = [], []
                for file in files[lo : lo + batch_size]:
                    try:
                        inputs.append(self.input(file))
                        good.append(file)
                    except (OSError, ValueError) as e:
                        warnings.warn(f"skipped {e}", stacklevel=2)
                if good:
                    found.update(zip(good, self.top(self.forward_inputs(np.stack(inputs)), top)))
            return found
        single = isinstance(images, str | os.PathLike) or not isinstance(images, Sequence | np.ndarray)
        single = single or (isinstance(images, np.ndarray) and images.ndim <= 3)
        batch = [images] if single else list(images)
        result = self.top(self.probabilities(batch, batch_size), top)
        return result[0] if single else result


def classify(images: Any, weights: str, model: str | None = None, top: int = 5) -> Any:
    """``Classifier.load(weights, model)(images, top)``: one call from images to names.
    ``weights`` is a tag (``resnet50.torchvision_v2``), a converted directory, a training
    workdir or an export artifact; ``images`` a path, a PIL image, a uint8 array, a
    folder or a sequence of them (see ``Classifier.__call__`` for what each returns)."""
    return Classifier.load(weights, model=model)(images, top=top)
