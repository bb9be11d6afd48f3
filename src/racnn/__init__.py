"""racnn: RA-CNN (Recurrent Attention CNN, CVPR 2017) for fine-grained recognition."""

__version__ = "0.1.0"
