"""Every drawing racnn makes: training curves and the confusion matrix (:mod:`~racnn.pictures.plots`), the attention
pictures' layout, captions and boxes (:mod:`~racnn.pictures.visualize`), their panels with several regions per scale
(:mod:`~racnn.pictures.region_pictures`), and running a model on a batch to draw them
(:mod:`~racnn.pictures.model_pictures`).

May import the config, the shared modules and :mod:`racnn.modeling`; never data, training, inference or the command
line (those call it). This file imports nothing: matplotlib loads only with the module that needs it.
"""
