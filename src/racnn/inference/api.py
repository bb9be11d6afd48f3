"""Python inference API: ``racnn.load(checkpoint) -> Predictor``, ``Predictor.predict(images) -> [Prediction]``.

>>> predictor = racnn.load("runs/cub")
>>> [p] = predictor.predict("bird.jpg", topk=3)
>>> p.top.name, p.top.prob, p.boxes  # fused class, its probability, attention boxes in bird.jpg's pixels

The model runs in the precision :func:`racnn.precision.choose_precision` picks for the device (``amp="auto"``:
bf16 weights where the device has fast bf16 kernels, else float32; channels-last on CPU and CUDA).

Inputs are preprocessed exactly as in evaluation (``racnn.data.build_transforms("test", ...)``): the shorter side
is resized to ``round(input_size * resize_ratio)``, the centre ``input_size`` square is cut out and normalised
with the backbone's mean and std. A model trained with ``data.source_size > 0`` also gets the same framing at
``source_size`` from the photo's own pixels, which its zooms are sampled from (:class:`racnn.data.SourceViews`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2

from racnn.checkpoint import load_model
from racnn.config import Config, resolve_device
from racnn.data.io import check_image_size, load_image
from racnn.data.transforms import SourceViews, build_transforms
from racnn.inference.hub import hub_folder, is_hub_name
from racnn.modeling.crop import boxes_to_xyxy
from racnn.modeling.heads import head_logits, is_trained, model_answer
from racnn.modeling.model import RACNN
from racnn.modeling.regions import as_regions, region_crops
from racnn.pictures.model_pictures import eval_forward
from racnn.pictures.region_pictures import draw_regions
from racnn.pictures.visualize import Caption, answer_label, head_caption, tensor_to_pil
from racnn.precision import choose_precision, inference_input, prepare_for_inference

__all__ = [
    "ClassScore",
    "ImageInput",
    "Prediction",
    "Predictor",
    "PreparedImage",
    "fused_key",
    "load",
    "model_normalization",
]


@dataclass(frozen=True)
class PreparedImage:
    """One image after the test-time preprocessing (:meth:`Predictor.prepare`); ``predict`` takes it as it is.

    Lets a caller preprocess in its own threads and keep only the small tensor, not the decoded image, while the
    image waits for a batch (``racnn app`` does).

    Attributes:
        tensor: ``(3, S, S)`` normalised model input, S = ``input_size``.
        size: ``(width, height)`` of the original image, to map the boxes back to it.
        source: the file the image came from, or ``None``.
        source_view: ``(3, M, M)``, the same framing at M = ``data.source_size``, normalised, for a model trained
            with a source (its zooms are sampled from it); ``None`` for the others.
    """

    tensor: Tensor
    size: tuple[int, int]
    source: str | None = None
    source_view: Tensor | None = None


ImageInput = Image.Image | str | os.PathLike | Tensor | PreparedImage


def fused_key(num_scales: int) -> str:
    """Name of the fusion head over all scales, e.g. ``"1+2+3"``: the model's overall prediction."""
    return RACNN.fusion_name(num_scales)


def model_normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    """The ``(mean, std)`` the model's backbone expects its inputs normalised with."""
    source = model if hasattr(model, "mean") else model.backbones[0]  # RACNN copies its backbone's
    return [float(v) for v in source.mean], [float(v) for v in source.std]


@dataclass(frozen=True)
class ClassScore:
    """One class of a top-k list."""

    index: int
    name: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "prob": self.prob}


@dataclass
class Prediction:
    """What the model says about one image.

    Attributes:
        source: the file the image came from, or ``None`` for an in-memory image or tensor.
        image_size: ``(width, height)`` of the original image.
        scales: top-k of each scale's own classifier, scale 1 first.
        fused: top-k of each fusion head, keyed ``"1+2"``, ``"1+2+3"``, ...
        fused_key: the all-scale fusion head, whose top-k is the overall prediction.
        boxes: one ``(x1, y1, x2, y2)`` box per zoomed scale (scale 2 first), in pixels of the ORIGINAL image
            (the preprocessing's resize and centre crop undone). Not clipped: a box lies inside the centre crop,
            which lies inside the image, so boxes are inside the image up to float rounding.
        boxes_normalized: the same boxes as ``(tx, ty, tl)`` in the normalised coordinates of the scale-1 input
            (the model's own ``boxes_in_image``).
        crops: the zoomed input of each zoomed scale as PIL images, when asked for (``return_crops=True``).
        regions: R, the attention regions per zoomed scale (``model.regions``). With R > 1, ``boxes``,
            ``boxes_normalized`` and ``crops`` hold region 1's (so code written for one region keeps working)
            and the ``region_*`` fields hold every region's.
        region_boxes: with R > 1, for each zoomed scale its R boxes, pixels of the original image; else None.
        region_boxes_normalized: likewise as ``(tx, ty, tl)``; else None.
        region_crops: with R > 1 and ``return_crops=True``, for each zoomed scale its R crops; else None.
    """

    source: str | None
    image_size: tuple[int, int]
    scales: list[list[ClassScore]]
    fused: dict[str, list[ClassScore]]
    fused_key: str
    boxes: list[tuple[float, float, float, float]]
    boxes_normalized: list[tuple[float, float, float]]
    crops: list[Image.Image] | None = field(default=None, repr=False, compare=False)
    regions: int = 1
    region_boxes: list[list[tuple[float, float, float, float]]] | None = None
    region_boxes_normalized: list[list[tuple[float, float, float]]] | None = None
    region_crops: list[list[Image.Image]] | None = field(default=None, repr=False, compare=False)

    @property
    def topk(self) -> list[ClassScore]:
        """The overall top-k: the all-scale fusion."""
        return self.fused[self.fused_key]

    @property
    def top(self) -> ClassScore:
        """The overall prediction: the all-scale fusion's best class."""
        return self.topk[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (no crops). Scales are keyed ``"1"``, ``"2"``, ...; boxes by their scale. With
        several regions, also ``"regions"`` and ``"region_boxes"`` / ``"region_boxes_normalized"``: per scale, a
        list of one box per region."""

        def scores(items: list[ClassScore]) -> list[dict[str, Any]]:
            return [c.to_dict() for c in items]

        regions = {}
        if self.regions > 1:
            regions = {
                "regions": self.regions,
                "region_boxes": {str(s + 2): [list(b) for b in boxes] for s, boxes in enumerate(self.region_boxes)},
                "region_boxes_normalized": {
                    str(s + 2): [list(b) for b in boxes] for s, boxes in enumerate(self.region_boxes_normalized)
                },
            }
        return {
            "file": self.source,
            "image_size": list(self.image_size),
            "prediction": self.top.to_dict(),
            "topk": scores(self.topk),
            "scales": {str(s + 1): scores(items) for s, items in enumerate(self.scales)},
            "fused": {key: scores(items) for key, items in self.fused.items()},
            "boxes": {str(s + 2): list(box) for s, box in enumerate(self.boxes)},
            "boxes_normalized": {str(s + 2): list(box) for s, box in enumerate(self.boxes_normalized)},
            **regions,
        }


class Predictor:
    """A model from a checkpoint, its preprocessing and its class names, ready to classify images.

    Args:
        model: an RA-CNN; put in eval mode.
        config: the config stored with it.
        class_names: one name per class.
        device: where to run; default the model's device.
        amp: ``"auto"`` (bf16 where the device has fast bf16 kernels, else float32), ``"none"`` (float32),
            ``"bf16"`` or ``"fp16"`` (CUDA). The model is moved, cast and put in eval mode in place, once.

    Attributes:
        precision: what it runs with (:class:`racnn.precision.Precision`; ``precision.describe()`` says why).
        source: the file the model was read from (:func:`load`), else ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        class_names: Sequence[str],
        device: str | torch.device | None = None,
        amp: str = "auto",
    ) -> None:
        self.config = config
        self.class_names = list(class_names)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.precision = choose_precision(amp, self.device)
        self.model = prepare_for_inference(model, self.device, self.precision)
        self.source: str | None = getattr(model, "source", None)
        self.mean, self.std = model_normalization(model)
        self.answer = model_answer(model)  # "fused", or "avg" where the fusion heads were never trained
        self.input_size = config.model.input_size
        self.source_size = config.data.source_size  # 0, or the side of the view the zooms are sampled from
        self.transform: v2.Compose | SourceViews = build_transforms(
            "test", self.input_size, self.mean, self.std, config.data.resize_ratio, source_size=self.source_size
        )
        """Test-time preprocessing: PIL image, uint8 tensor or float tensor in [0, 1] -> ``(3, S, S)``, or the pair
        ``((3, S, S), (3, M, M))`` with a source."""

    def save_pretrained(self, folder: str | os.PathLike, *, metrics: dict[str, Any] | None = None) -> Path:
        """This predictor's model as a folder to share; see :func:`racnn.inference.hub.save_pretrained`."""
        from racnn.inference.hub import save_pretrained

        return save_pretrained(self, folder, metrics=metrics)

    def __repr__(self) -> str:
        m = self.config.model
        return (
            f"Predictor(backbone={m.backbone!r}, num_scales={m.num_scales}, input_size={m.input_size}, "
            f"classes={len(self.class_names)}, device={self.device}, amp={self.precision.amp!r})"
        )

    # --------------------------------------------------------------------------------------------------------
    # geometry of the preprocessing, read from the transform itself so the two cannot disagree

    def _geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(scale_x, scale_y, left, top)``: original pixel ``x = (x_input + left) * scale_x``, likewise y."""
        new_w, new_h = width, height
        left = top = 0.0
        geometry = self.transform.geometry if isinstance(self.transform, SourceViews) else self.transform
        for step in geometry.transforms:
            if isinstance(step, v2.Resize):
                short_target = step.size[0] if isinstance(step.size, (list, tuple)) else step.size
                short, long = min(new_w, new_h), max(new_w, new_h)
                resized_long = int(short_target * long / short)  # torchvision's rule
                new_w, new_h = (short_target, resized_long) if new_w <= new_h else (resized_long, short_target)
            elif isinstance(step, v2.CenterCrop):
                crop_h, crop_w = step.size
                top = int(round((new_h - crop_h) / 2.0))  # torchvision's anchor
                left = int(round((new_w - crop_w) / 2.0))
        return width / new_w, height / new_h, float(left), float(top)

    def to_original(self, boxes_xyxy: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Map ``(N, 4)`` pixel boxes of the preprocessing's crop back to the original image of size ``(W, H)``.

        The crop is the model's input, or with a source (``data.source_size``) the source view, whose pixels the
        geometry ran at: boxes in pixels of ``source_size``.
        """
        sx, sy, left, top = self._geometry(*image_size)
        offset = boxes_xyxy.new_tensor([left, top, left, top])
        scale = boxes_xyxy.new_tensor([sx, sy, sx, sy])
        return (boxes_xyxy + offset) * scale

    # --------------------------------------------------------------------------------------------------------

    def _expand(self, images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        """Flatten the input into single images (a ``(B, 3, H, W)`` tensor gives B), checking types and ranges."""
        if isinstance(images, (list, tuple)):
            return [single for image in images for single in self._expand(image)]
        if isinstance(images, (str, os.PathLike, Image.Image, PreparedImage)):
            return [images]
        if isinstance(images, Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"tensor input must be (3, H, W) or (B, 3, H, W) RGB, got {tuple(images.shape)}")
            if images.shape[0] == 0:
                return []  # an empty batch: no images, no predictions
            check_image_size(int(images.shape[-1]), int(images.shape[-2]), "tensor input")
            if images.is_floating_point() and not bool(torch.isfinite(images).all()):
                raise ValueError("tensor input holds NaN or infinite values; pass an RGB image in [0, 1]")
            if images.is_floating_point():
                lo, hi = float(images.min()), float(images.max())
                if lo < -1e-3 or hi > 1 + 1e-3:
                    raise ValueError(
                        f"tensor input must be un-normalised RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                        "pass the image before normalisation, the predictor normalises it"
                    )
            elif images.dtype != torch.uint8:
                raise ValueError(f"tensor input must be float in [0, 1] or uint8, got {images.dtype}")
            return list(images.cpu().unbind(0))
        raise TypeError(
            f"cannot predict on a {type(images).__name__}; pass a PIL image, a path, a (3, H, W) or "
            "(B, 3, H, W) tensor, or a list of these"
        )

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Load (for a path) and preprocess one image, as :meth:`predict` does; thread-safe.

        Raises:
            racnn.data.ImageLoadError: a path that is missing or not a readable image.
            ValueError: a batch of images, or a tensor outside the ranges :meth:`predict` accepts.
        """
        singles = self._expand(image)
        if len(singles) != 1:
            raise ValueError(f"prepare takes one image, got {len(singles)}; use predict for several")
        return self._prepare(singles[0])

    def _prepare(self, image: ImageInput) -> PreparedImage:
        source = None
        if isinstance(image, PreparedImage):
            side = self.input_size
            if tuple(image.tensor.shape) != (3, side, side):
                raise ValueError(
                    f"prepared image has shape {tuple(image.tensor.shape)}, this model takes (3, {side}, {side})"
                )
            view, size = image.source_view, self.source_size
            if size and (view is None or tuple(view.shape) != (3, size, size)):
                got = "none" if view is None else f"shape {tuple(view.shape)}"
                raise ValueError(f"prepared image has source view {got}; this model zooms into (3, {size}, {size})")
            return image
        if isinstance(image, (str, os.PathLike)):
            source = str(Path(image))
            image = load_image(image)
        if isinstance(image, Image.Image):
            check_image_size(image.width, image.height, source or "PIL image")
            image = image if image.mode == "RGB" else image.convert("RGB")
            return self._prepared(self.transform(image), image.size, source)
        height, width = image.shape[-2:]
        return self._prepared(self.transform(image), (int(width), int(height)), source)

    @staticmethod
    def _prepared(views: Tensor | tuple[Tensor, Tensor], size: tuple[int, int], source: str | None) -> PreparedImage:
        if isinstance(views, tuple):  # a source view (data.source_size)
            return PreparedImage(views[0], size, source, source_view=views[1])
        return PreparedImage(views, size, source)

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        topk: int = 5,
        *,
        batch_size: int = 16,
        return_crops: bool = False,
    ) -> list[Prediction]:
        """Classify images and report where each scale looked.

        Args:
            images: a PIL image, a path (``str`` or ``Path``), a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor, a
                :class:`PreparedImage`, or a list of these. Tensors are UN-normalised RGB, float in [0, 1] (or uint8),
                any size: they are resized and cropped like images.
            topk: how many classes to report per scale and per fusion head (at most the number of classes).
            batch_size: images per forward pass.
            return_crops: also return each zoomed scale's input as PIL images (``Prediction.crops``).

        Returns:
            One :class:`Prediction` per image, in input order (a ``(B, 3, H, W)`` tensor counts as ``B``). The model
            runs in eval mode even if someone switched ``predictor.model`` to training; its modes are restored.

        Raises:
            racnn.data.ImageLoadError: a path that is missing or not a readable image.
        """
        if topk < 1 or batch_size < 1:
            raise ValueError(f"topk and batch_size must be at least 1, got topk={topk}, batch_size={batch_size}")
        singles = self._expand(images)
        k = min(topk, len(self.class_names))
        predictions: list[Prediction] = []
        for start in range(0, len(singles), batch_size):  # load and preprocess one batch at a time
            chunk = [self._prepare(image) for image in singles[start : start + batch_size]]
            inputs = [torch.stack([item.tensor for item in chunk])]  # (B, 3, S, S)
            if self.source_size:
                inputs.append(torch.stack([item.source_view for item in chunk]))  # (B, 3, M, M)
            out = eval_forward(self.model, *(inference_input(x.to(self.device), self.precision) for x in inputs))
            predictions += self._decode(out, chunk, k, return_crops)
        return predictions

    def _decode(self, out: Any, chunk: list[PreparedImage], k: int, return_crops: bool) -> list[Prediction]:
        num_scales = len(out.logits)

        def top(logits: Tensor) -> tuple[list[list[float]], list[list[int]]]:
            probs, idx = logits.float().softmax(-1).topk(k, dim=-1)  # (B, k)
            return probs.cpu().tolist(), idx.cpu().tolist()

        def scores(probs: list[float], idx: list[int]) -> list[ClassScore]:
            return [ClassScore(i, self._name(i), p) for p, i in zip(probs, idx, strict=True)]

        scale_tops = [top(logits) for logits in out.logits]
        fused_tops = {key: top(logits) for key, logits in out.fused.items()}
        if self.answer == "avg":
            fused_tops["avg"] = top(head_logits(out)["avg"])
        side = self.source_size or self.input_size  # the side the preprocessing's geometry ran at
        boxes_norm = [as_regions(b.float().cpu()) for b in out.boxes_in_image]  # S-1 x (B, R, 3)
        regions = boxes_norm[0].shape[1] if boxes_norm else 1
        # S-1 x (B R, 4), pixels of the crop
        boxes_px = [boxes_to_xyxy(b.reshape(-1, 3), (side, side)) for b in boxes_norm]

        result = []
        for i, item in enumerate(chunk):
            rows = slice(i * regions, (i + 1) * regions)
            # (S-1, R, 4) in pixels of the original image
            originals = self.to_original(torch.cat([b[rows] for b in boxes_px]), item.size).view(-1, regions, 4)
            originals = [[tuple(box) for box in scale] for scale in originals.tolist()]
            normalized = [[tuple(box) for box in b[i].tolist()] for b in boxes_norm]
            crops = None
            if return_crops:
                crops = [
                    [tensor_to_pil(c.float(), self.mean, self.std) for c in region_crops(out.crops[s])[i]]
                    for s in range(1, num_scales)
                ]
            result.append(
                Prediction(
                    source=item.source,
                    image_size=item.size,
                    scales=[scores(p[i], ix[i]) for p, ix in scale_tops],
                    fused={key: scores(p[i], ix[i]) for key, (p, ix) in fused_tops.items()},
                    fused_key=fused_key(num_scales) if self.answer == "fused" else "avg",
                    boxes=[scale[0] for scale in originals],
                    boxes_normalized=[scale[0] for scale in normalized],
                    crops=[scale[0] for scale in crops] if crops is not None else None,
                    regions=regions,
                    region_boxes=originals if regions > 1 else None,
                    region_boxes_normalized=normalized if regions > 1 else None,
                    region_crops=crops if regions > 1 else None,
                )
            )
        return result

    def _name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def draw(self, image: Image.Image, prediction: Prediction, max_side: int | None = None) -> Image.Image:
        """The attention picture of one prediction on its original image (see
        :func:`racnn.pictures.visualize.draw_attention`).

        Args:
            image: the image the prediction was made on.
            prediction: from ``predict(..., return_crops=True)`` on ``image``.
            max_side: when the image's longer side exceeds it, draw a copy reduced to that side (boxes scaled
                alike); ``None`` draws at the original size, so the boxes sit at ``prediction.boxes``. An image
                whose shorter side is below :data:`racnn.pictures.visualize.MIN_PANEL` is drawn upscaled to it.

        The title names the file (``prediction.source``) and the model's answer, a legend maps box colours to
        scales (to regions for a model with several, :mod:`racnn.pictures.region_pictures`), and each scale's (first)
        panel's caption gives its top-1; heads no phase has trained show no answer.
        Nothing is marked right or wrong: the true class is unknown here.
        """
        if prediction.crops is None:
            raise ValueError("this prediction has no crops; call predict(..., return_crops=True)")
        if prediction.regions > 1 and prediction.region_crops is None:
            raise ValueError("this prediction has no region crops; call predict(..., return_crops=True)")
        boxes = prediction.region_boxes or [[box] for box in prediction.boxes]  # per scale, per region
        crops = prediction.region_crops or [[crop] for crop in prediction.crops]
        if max_side is not None and max(image.size) > max_side:
            factor = max_side / max(image.size)
            image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))))
            boxes = [[tuple(v * factor for v in box) for box in scale] for scale in boxes]
        trained = getattr(self.model, "trained_heads", None)

        def caption(label: str, head: str, score: ClassScore) -> Caption:
            if not is_trained(head, trained):
                return head_caption(label, None)  # a head no phase trained: its answer is noise
            return head_caption(label, score.name, score.prob)

        name = Path(prediction.source).name if prediction.source else "RA-CNN attention"
        answer = caption(answer_label(self.answer), self.answer, prediction.top)
        captions = [caption(f"scale {s + 1}", f"s{s + 1}", items[0]) for s, items in enumerate(prediction.scales)]
        return draw_regions(image, boxes, crops, captions, title=f"{name} · {answer.text}")[0]


def load(checkpoint: str | os.PathLike, device: str | torch.device = "auto", amp: str = "auto") -> Predictor:
    """Load a checkpoint for inference.

    Args:
        checkpoint: a run folder (its best.pt when kept, else model.safetensors, else last.pt; the
            predictor's ``source`` names the file read), one of those files (``.pt`` loaded with
            ``weights_only=True``: no code in it runs); a folder written by :func:`racnn.save_pretrained`; or
            ``"hf-hub:owner/name"`` (``@revision`` optional): that folder on the Hugging Face Hub, downloaded into
            its cache or found there (``HF_HUB_OFFLINE=1`` reads the cache only).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        amp: ``"auto"`` (bf16 where the device has fast bf16 kernels, else float32), ``"none"``, ``"bf16"``,
            ``"fp16"`` (CUDA); see :mod:`racnn.precision`.

    Returns:
        A :class:`Predictor`.

    Raises:
        racnn.checkpoint.CheckpointError: the file is missing, not a racnn checkpoint, or does not fit the model
            its config describes.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if is_hub_name(checkpoint):
        checkpoint = hub_folder(str(checkpoint))
    model, cfg, class_names = load_model(checkpoint, map_location=device)
    return Predictor(model, cfg, class_names, device=device, amp=amp)
