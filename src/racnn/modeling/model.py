"""RA-CNN: per-scale classification networks linked by attention proposal networks (METHOD §1-2).

Scale 1 sees the image. The APN of scale s reads scale s's last conv map and proposes a square box in scale s's
input; scale s + 1 sees that box, zoomed to ``zoom_size``. Every zoomed input is sampled from the original
image with the box composed through the chain, so it is as sharp as the image allows. Given a ``source``, the
same framing at a higher resolution, the zooms are sampled from it instead (without aliasing), so the finer
scales see detail that scale 1's input cannot resolve.

With ``regions = K > 1`` the first APN proposes K boxes per image and every finer scale has K regions, run as one
batch of B * K images (:mod:`racnn.modeling.regions` has the shapes and the pooling; docs/DESIGN.md the reasons).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from racnn.config import per_apn
from racnn.modeling.backbones import build_backbone, check_input_size
from racnn.modeling.crop import antialiased_crop, attention_crop, compose_boxes
from racnn.modeling.heads import fusion_name
from racnn.modeling.regions import MAX_REGIONS, REGION_POOLS, as_regions, initial_centres, pool_regions, pooled_width

__all__ = ["APN", "RACNN", "RACNNOutput", "apn_boxes"]


def apn_boxes(raw: Tensor, min_side: float) -> Tensor:
    """Map raw APN outputs ``(a1, a2, a3)`` to boxes ``(tx, ty, tl)`` that are valid by construction.

    ``tl = tl_min + (1/2 - tl_min) * sigmoid(a3)`` with ``tl_min = min_side / 2``, ``tx = tl + (1 - 2 tl) *
    sigmoid(a1)``, ``ty = tl + (1 - 2 tl) * sigmoid(a2)``: the box lies inside the image and its side is at least
    ``min_side``, for any finite input, without clamps (which would stop the gradient).

    Args:
        raw: ``(B, 3)`` unbounded outputs.
        min_side: smallest box side, in units of the input side, in ``(0, 1]``.

    Returns:
        ``(B, 3)`` normalised boxes.
    """
    tl_min = min_side / 2
    gates = torch.sigmoid(raw)  # (B, 3)
    tl = tl_min + (0.5 - tl_min) * gates[:, 2]  # (B,)
    centre = tl[:, None] + (1 - 2 * tl[:, None]) * gates[:, :2]  # (B, 2)
    return torch.cat([centre, tl[:, None]], dim=1)  # (B, 3)


class APN(nn.Module):
    """Attention proposal network: conv map -> box in the coordinates of the map's input.

    Adaptive average pooling to ``pool x pool`` makes it independent of the input size; then
    fc -> tanh -> fc -> :func:`apn_boxes`. With ``channels > 0`` a 1 x 1 convolution (+ ReLU) first reduces the map
    to that many channels: the fc then reads the map's spatial detail at a fraction of the weights (a 1280-channel
    map pooled to 5 x 5 makes fc1 1280 * 25 * hidden wide; 64 channels make it 20 times smaller). With
    ``fixed_side > 0`` the attention is off: every image gets the centred box of that side (the "fixed zoom"
    control; the layers stay, so checkpoints keep their shape). With
    ``regions = K > 1`` the last fc gives ``3 K`` outputs: K boxes ``(B, K, 3)``, starting at
    :func:`racnn.modeling.regions.initial_centres` (one box: ``(B, 3)``, as in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        pool: int = 7,
        hidden: int = 1024,
        min_side: float = 1 / 3,
        fixed_side: float = 0.0,
        regions: int = 1,
        channels: int = 0,
    ) -> None:
        super().__init__()
        if channels < 0:
            raise ValueError(f"channels must be 0 (no reduction) or positive, got {channels}")
        if not 0 < min_side <= 1:
            raise ValueError(f"min_side must be in (0, 1], got {min_side}")
        if not 0 <= fixed_side <= 1:
            raise ValueError(f"fixed_side must be 0 or in (0, 1], got {fixed_side}")
        if not 1 <= regions <= MAX_REGIONS:
            raise ValueError(f"regions must be 1 to {MAX_REGIONS}, got {regions}")
        self.min_side = float(min_side)
        self.fixed_side = float(fixed_side)
        self.regions = int(regions)
        # No parameters without a reduction: checkpoints written before apn_channels existed keep their keys.
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU()) if channels else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc1 = nn.Linear((channels or in_channels) * pool * pool, hidden)
        self.fc2 = nn.Linear(hidden, 3 * regions)
        # The first box is centred with the middle side (all sigmoids at 1/2). Small random weights, not zeros,
        # so that fc1 gets a gradient from the first step.
        nn.init.normal_(self.fc2.weight, std=1e-3)
        nn.init.zeros_(self.fc2.bias)
        if regions > 1:  # K boxes on one spot would stay together: start them apart
            with torch.no_grad():
                centres = torch.tensor(initial_centres(regions))  # (K, 2), the sigmoids' values
                self.fc2.bias.view(regions, 3)[:, :2] = torch.logit(centres)

    def forward(self, feature_map: Tensor) -> Tensor:
        batch = feature_map.shape[0]
        if self.fixed_side > 0:
            box = feature_map.new_tensor([0.5, 0.5, self.fixed_side / 2])
            # (B, 3) or (B, K, 3), no gradient to the APN
            return box.expand(batch, 3) if self.regions == 1 else box.expand(batch, self.regions, 3)
        x = self.pool(self.reduce(feature_map)).flatten(1)  # (B, C' * pool * pool)
        raw = self.fc2(torch.tanh(self.fc1(x)))  # (B, 3 K)
        if self.regions == 1:
            return apn_boxes(raw, self.min_side)  # (B, 3)
        return apn_boxes(raw.reshape(-1, 3), self.min_side).view(batch, self.regions, 3)  # (B, K, 3)


@dataclass
class RACNNOutput:
    """What :meth:`RACNN.forward` returns; S is the number of scales, N the number of classes and R the number of
    attention regions per scale (``model.regions``). With R = 1 (the default) there is no region axis at all.

    Attributes:
        logits: S tensors ``(B, N)``.
        fused: ``"1+2"``, ``"1+2+3"``, ... -> ``(B, N)``, the fusion heads.
        boxes: S - 1 tensors ``(B, 3)``, or ``(B, R, 3)`` with R > 1; box s in the coordinates of scale s's input
            (region r's own crop for s >= 2). :func:`racnn.modeling.regions.as_regions` views either as ``(B, R, 3)``.
        boxes_in_image: the same boxes composed into the coordinates of the image (scale 1's input).
        crops: S inputs, ``crops[0]`` is the image, then ``(B, 3, zoom_size, zoom_size)``, or
            ``(B, R, 3, zoom_size, zoom_size)`` with R > 1 (from the source when one was given).
        features: S pooled features ``(B, C)``; with R > 1 a zoomed scale's is its regions' features pooled by
            ``region_pool`` (``(B, R * C)`` for ``concat``).
        feature_maps: S last conv maps ``(B, C, h, w)``, or ``(B, R, C, h, w)`` for a zoomed scale with R > 1.
    """

    logits: list[Tensor]
    fused: dict[str, Tensor]
    boxes: list[Tensor]
    boxes_in_image: list[Tensor]
    crops: list[Tensor]
    features: list[Tensor]
    feature_maps: list[Tensor]


def _check_source(images: Tensor, source: Tensor) -> None:
    """The source must be a batch of the same images, framed alike (the same aspect ratio, to a pixel)."""
    if source.dim() != 4 or source.shape[:2] != images.shape[:2]:
        raise ValueError(
            f"source must have shape (B, C, M, N) like images {tuple(images.shape)}, got {tuple(source.shape)}"
        )
    (h, w), (m, n) = images.shape[-2:], source.shape[-2:]
    if abs(m * w - n * h) >= max(w, n):
        raise ValueError(f"source {m}x{n} is not framed like images {h}x{w} (another aspect ratio)")


def _per_image(rows: Tensor, batch: int, regions: int) -> Tensor:
    """``(B R, ...)`` rows, image-major, as ``(B, R, ...)`` (a view); unchanged with one region."""
    return rows if regions == 1 else rows.unflatten(0, (batch, regions))


class RACNN(nn.Module):
    """Recurrent attention CNN with ``num_scales`` scales.

    Args:
        backbone: backbone name (see :func:`racnn.modeling.backbones.list_backbones`).
        num_classes: ``K``.
        num_scales: ``S``, 2 to 4.
        input_size: side of scale 1's input; recorded for transforms and export, not enforced by forward.
        zoom_size: side of every zoomed input.
        min_side: smallest APN box side, in units of its scale's input side.
        apn_pool: the APN pools the conv map to ``apn_pool x apn_pool``.
        apn_hidden: width of the APN's hidden layer.
        apn_channels: 0, or the channels a 1 x 1 convolution reduces the conv map to before the APN's fc layers.
        mask_k: steepness of the crop's boxcar mask, per pixel of the image.
        fixed_side: 0 (the APNs learn their boxes), or the side of the centred box every APN proposes instead; or
            one such value per APN (``num_scales - 1``, the first APN's first).
        pretrained: see :func:`racnn.modeling.backbones.build_backbone`; all scales start from the same weights.
        backbone_kwargs: keyword arguments for ``timm.create_model`` (``"timm:"`` backbones only), e.g.
            ``{"img_size": 448}``.
        regions: attention regions per zoomed scale, 1 (the paper) to 8 (:mod:`racnn.modeling.regions`).
        region_pool: how a zoomed scale's feature is made from its regions' (``mean``, ``max`` or ``concat``);
            unused with one region.

    Raises:
        ValueError: for a backbone that cannot take ``input_size`` or ``zoom_size`` (checked by one forward on the
            meta device, so a ViT built for 224 px is refused here, not in the first training step).
    """

    def __init__(
        self,
        backbone: str = "tiny",
        num_classes: int = 200,
        num_scales: int = 3,
        input_size: int = 448,
        zoom_size: int = 224,
        min_side: float = 1 / 3,
        apn_pool: int = 7,
        apn_hidden: int = 1024,
        mask_k: float = 10.0,
        pretrained: str | None = None,
        fixed_side: float | Sequence[float] = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        regions: int = 1,
        region_pool: str = "mean",
        apn_channels: int = 0,
    ) -> None:
        super().__init__()
        if region_pool not in REGION_POOLS:
            raise ValueError(f"region_pool must be one of {', '.join(REGION_POOLS)}, got {region_pool!r}")
        if not 2 <= num_scales <= 4:
            raise ValueError(f"num_scales must be 2, 3 or 4, got {num_scales}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        fixed_sides = per_apn(fixed_side, num_scales)
        if len(fixed_sides) != num_scales - 1:
            raise ValueError(f"fixed_side: one value, or one per APN ({num_scales - 1}), got {len(fixed_sides)}")
        self.num_scales = num_scales
        self.num_classes = num_classes
        self.input_size = input_size
        self.zoom_size = zoom_size
        self.mask_k = float(mask_k)
        self.regions = int(regions)
        self.region_pool = region_pool

        first = build_backbone(backbone, pretrained, backbone_kwargs)
        sizes = {input_size: "model.input_size"}
        sizes.setdefault(zoom_size, "model.zoom_size")  # one check when both sides are equal
        for size, key in sizes.items():
            check_input_size(first, backbone, size, key)
        self.mean, self.std = first.mean, first.std
        channels = first.out_channels
        # Same initial weights at every scale, separate parameters.
        self.backbones = nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(num_scales - 1)])
        # The first APN proposes the K regions; each finer one proposes one box inside its own region.
        self.apns = nn.ModuleList(
            [
                APN(
                    channels,
                    apn_pool,
                    apn_hidden,
                    min_side,
                    fixed_sides[s],
                    regions=regions if s == 0 else 1,
                    channels=apn_channels,
                )
                for s in range(num_scales - 1)
            ]
        )
        widths = [channels] + [pooled_width(channels, regions, region_pool)] * (num_scales - 1)
        self.classifiers = nn.ModuleList([nn.Linear(width, num_classes) for width in widths])
        # The heads some phase has trained (racnn.modeling.heads): set by training and read from checkpoints; None:
        # unknown.
        self.trained_heads: list[str] | None = None
        self.fusion = nn.ModuleDict(
            {self.fusion_name(n): nn.Linear(sum(widths[:n]), num_classes) for n in range(2, num_scales + 1)}
        )

    @staticmethod
    def fusion_name(n: int) -> str:
        """``"1+2+...+n"``, the key of the fusion head over the first ``n`` scales."""
        return fusion_name(n)

    @classmethod
    def from_config(cls, cfg: Any) -> RACNN:
        """Build from any object with the constructor's arguments as attributes (``racnn.config.ModelConfig``)."""
        return cls(
            backbone=cfg.backbone,
            num_classes=cfg.num_classes,
            num_scales=cfg.num_scales,
            input_size=cfg.input_size,
            zoom_size=cfg.zoom_size,
            min_side=cfg.min_side,
            apn_pool=cfg.apn_pool,
            apn_hidden=cfg.apn_hidden,
            mask_k=cfg.mask_k,
            pretrained=cfg.pretrained,
            fixed_side=getattr(cfg, "fixed_side", 0.0),
            backbone_kwargs=getattr(cfg, "backbone_kwargs", None),
            regions=getattr(cfg, "regions", 1),
            region_pool=getattr(cfg, "region_pool", "mean"),
            apn_channels=getattr(cfg, "apn_channels", 0),
        )

    def forward(self, images: Tensor, source: Tensor | None = None, first_boxes: Tensor | None = None) -> RACNNOutput:
        """Run every scale.

        Args:
            images: ``(B, 3, H, W)`` scale 1's input.
            source: ``None``, or ``(B, 3, M, N)``: the same framing as ``images`` at a higher resolution, e.g.
                the photo at ``data.source_size``. The zooms are then sampled from it through the composed boxes
                (normalised, so they mean the same place in both), with :func:`racnn.modeling.crop.antialiased_crop`
                where a box covers more source pixels than ``zoom_size``; the mask keeps its steepness per pixel
                of ``images``. Without it, every zoom is :func:`racnn.modeling.crop.attention_crop` of ``images``.
            first_boxes: ``None``, or ``(B, 3)`` boxes ``(cx, cy, half side)`` that replace the first APN's (one region
                only): the oracle-zoom control (``model.oracle_zoom``) hands scale 2 the annotated object box.
        """
        if first_boxes is not None and (self.regions != 1 or first_boxes.shape != (images.shape[0], 3)):
            raise ValueError(f"first_boxes must be (B, 3) with one region, got {tuple(first_boxes.shape)}")
        image_size = (images.shape[-2], images.shape[-1])
        if source is not None:
            _check_source(images, source)
        batch, regions = images.shape[0], self.regions
        rows, row_source = images, source  # what the zooms sample: with R > 1, every image R times (image-major)
        if regions > 1:
            rows = images.repeat_interleave(regions, dim=0)  # (B R, 3, H, W)
            row_source = source.repeat_interleave(regions, dim=0) if source is not None else None
        crops, boxes, boxes_in_image = [images], [], []
        inputs = [images]  # what each backbone reads: (B, 3, H, W), then (B R, 3, zoom_size, zoom_size)
        logits, features, feature_maps = [], [], []
        for s in range(self.num_scales):
            feature_map = self.backbones[s](inputs[s])  # (B, C, h, w) at s = 0, then (B R, C, h, w)
            pooled = pool_regions(feature_map.mean(dim=(2, 3)), regions if s else 1, self.region_pool)  # (B, C')
            feature_maps.append(_per_image(feature_map, batch, regions) if s else feature_map)
            features.append(pooled)
            logits.append(self.classifiers[s](pooled))  # (B, N)
            if s + 1 < self.num_scales:
                box = self.apns[s](feature_map)  # (B, 3) / (B, R, 3) at s = 0, (B R, 3) after: in inputs[s]'s frame
                if s == 0 and first_boxes is not None:
                    box = first_boxes.to(box.dtype)  # the oracle: the object box, no gradient to the first APN
                boxes.append(_per_image(box, batch, regions) if s else box)
                chain = [as_regions(b).reshape(-1, 3) for b in boxes]  # (B R, 3) each; (B, 3) with R = 1
                composed = compose_boxes(chain, image_size)[-1]  # (B R, 3), in the image's coordinates
                boxes_in_image.append(_per_image(composed, batch, regions))
                zoomed = self._zoom(rows, row_source, composed)  # (B R, 3, zoom_size, zoom_size)
                inputs.append(zoomed)
                crops.append(_per_image(zoomed, batch, regions))

        # L2-normalised as in the paper, times sqrt(C) so every component has unit RMS: the same directions, but
        # the fusion fc then trains at ordinary learning rates (unit-length 1280-d features need weights ~35x larger).
        normalised = [F.normalize(f, dim=1) * f.shape[1] ** 0.5 for f in features]
        fused = {
            self.fusion_name(n): self.fusion[self.fusion_name(n)](torch.cat(normalised[:n], dim=1))  # (B, K)
            for n in range(2, self.num_scales + 1)
        }
        return RACNNOutput(logits, fused, boxes, boxes_in_image, crops, features, feature_maps)

    def _zoom(self, images: Tensor, source: Tensor | None, boxes: Tensor) -> Tensor:
        if source is None:
            return attention_crop(images, boxes, self.zoom_size, k=self.mask_k)
        k_side = min(images.shape[-2:])  # the mask as on scale 1's input, whatever the source's resolution
        return antialiased_crop(source.to(images.dtype), boxes, self.zoom_size, k=self.mask_k, k_side=k_side)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"cls"``: backbones, classifiers and fusion heads; ``"apn"``: the APNs. Disjoint and complete."""
        cls_modules = [self.backbones, self.classifiers, self.fusion]
        return {
            "cls": [p for m in cls_modules for p in m.parameters()],
            "apn": list(self.apns.parameters()),
        }

    @torch.no_grad()
    def init_fusion_from_classifiers(self, features: list[Tensor]) -> None:
        """Start every fusion head as the sum of its scales' classifiers: the ensemble of the scales.

        A fusion head reads ``normalise(f_s) * sqrt(C)`` where scale s's classifier reads ``f_s``. With ``r_s``
        the mean of ``|f_s| / sqrt(C)`` over a batch, the head's block for scale s becomes ``r_s W_s`` and its
        bias ``sum_s b_s``, so its logits are the sum of the scales' logits: exactly for a feature of norm
        ``sqrt(C) r_s``, closely for the others.

        Args:
            features: one ``(B, C)`` batch of pooled features per scale (``RACNNOutput.features``; ``(B, R C)``
                for a zoomed scale with ``region_pool="concat"``).
        """
        ratios = [f.float().norm(dim=1).mean() / f.shape[1] ** 0.5 for f in features]  # widths differ for concat
        for n in range(2, self.num_scales + 1):
            head = self.fusion[self.fusion_name(n)]
            blocks = [self.classifiers[s].weight * ratios[s] for s in range(n)]
            head.weight.copy_(torch.cat(blocks, dim=1))
            head.bias.copy_(sum(self.classifiers[s].bias for s in range(n)))

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the fusion heads."""
        return list(self.fusion.parameters())
