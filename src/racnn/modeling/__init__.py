"""The method itself (METHOD §1-3): everything that defines an RA-CNN model and what it is trained on.

- :mod:`~racnn.modeling.backbones`: name -> feature extractor up to the last conv map; local weights, with
  :mod:`~racnn.modeling.hub_weights` saying where ``pretrained=imagenet`` finds them.
- :mod:`~racnn.modeling.crop`: the differentiable attention crop and the box helpers.
- :mod:`~racnn.modeling.regions`: several regions per scale.
- :mod:`~racnn.modeling.model`: the APN and :class:`~racnn.modeling.model.RACNN`.
- :mod:`~racnn.modeling.heads`: the classification and fusion heads, which a phase trains.
- :mod:`~racnn.modeling.losses`: per-scale cross-entropy, the ranking loss, APN pre-training targets.

Knows no data, training, pictures or command line. The public names are also at the package root
(``racnn.RACNN``, ``racnn.attention_crop``, ...); this file imports nothing, so that importing one module here
(``racnn.modeling.crop``) does not load the others.
"""
