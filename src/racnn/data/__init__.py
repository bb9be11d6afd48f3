"""Data layer: fine-grained data sets in their official layouts, transforms, the synthetic set, checks.

One module per data set family (``cub``, ``dogs``, ``cars``, ``aircraft``, ``flowers``, ``folder``) on top of
``base`` (ImageDataset, layout helpers) and ``registry`` (build_dataset). Importing this package imports every
family, which is what registers it in ``DATASETS``. Nothing here imports the model or training.
"""

from .aircraft import FGVCAircraft
from .base import DataProblemsWarning, ImageDataset, SkippedImagesWarning
from .cars import StanfordCars
from .cub import CUB200
from .dogs import StanfordDogs
from .flowers import Flowers102
from .folder import ImageFolderSplits
from .io import (
    IMG_EXTENSIONS,
    DatasetError,
    DatasetIntegrityError,
    DatasetLayoutError,
    ImageLoadError,
    MissingExtraError,
    check_image_file,
    load_image,
)
from .registry import DATASETS, build_dataset, dataset_names, register_dataset
from .synthetic import SyntheticFineGrained, SyntheticSample
from .transforms import IMAGENET_MEAN, IMAGENET_STD, SourceViews, build_transforms, denormalize, to_tensor

__all__ = [
    "CUB200",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "DataProblemsWarning",
    "DatasetError",
    "DatasetIntegrityError",
    "DatasetLayoutError",
    "FGVCAircraft",
    "Flowers102",
    "ImageDataset",
    "ImageFolderSplits",
    "ImageLoadError",
    "MissingExtraError",
    "SkippedImagesWarning",
    "SourceViews",
    "StanfordCars",
    "StanfordDogs",
    "SyntheticFineGrained",
    "SyntheticSample",
    "build_dataset",
    "build_transforms",
    "check_image_file",
    "dataset_names",
    "denormalize",
    "load_image",
    "register_dataset",
    "to_tensor",
]
