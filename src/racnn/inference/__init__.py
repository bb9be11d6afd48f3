"""Using a trained model: the Python API (:mod:`~racnn.inference.api`: ``racnn.load`` -> ``Predictor``), export to
ONNX / TorchScript (:mod:`~racnn.inference.export`) and its parity check (:mod:`~racnn.inference.parity`).

``racnn.load``, ``racnn.Predictor`` and ``racnn.Prediction`` are also at the package root. This file imports
nothing, so that ``import racnn.inference.parity`` stays light.
"""
