"""Small fabricated copies of the data set layouts, for the data layer's tests.

Every image is a tiny solid-colour file whose red channel encodes its label (``label_colour``), so a test can
check that a data set pairs each file with the right label. Real JPEG and PNG files are written with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io as sio
from PIL import Image, PngImagePlugin

IMAGE_SIZE = (20, 16)  # (width, height)
REPO_ROOT = Path(__file__).resolve().parents[1]
CUB50 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub50"


def label_colour(label: int) -> tuple[int, int, int]:
    """Colour of the images of class ``label`` (0-based); the red channel identifies the label."""
    return (30 + 40 * label, 90, 160)


def write_image(path: Path, label: int, format: str = "JPEG", size: tuple[int, int] = IMAGE_SIZE) -> Path:
    """Writes a solid image of ``label_colour(label)`` in ``format`` (whatever the file's extension).

    JPEG and PNG files carry their own name as a comment, so no two are byte for byte the same: a copy of one
    image in two splits is what ``racnn data verify`` reports as a leak.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, label_colour(label))
    if format == "JPEG":
        image.save(path, format=format, comment=str(path))
    elif format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", str(path))
        image.save(path, format=format, pnginfo=info)
    else:
        image.save(path, format=format)
    return path


def write_noise_jpeg(path: Path, size: int = 64, seed: int = 0) -> Path:
    """A JPEG large enough that cutting it in half leaves a truncated but identifiable file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def red_label(image) -> int:
    """Inverse of ``label_colour`` for a loaded (3, H, W) tensor in [0, 1]."""
    return round((float(image[0].mean()) * 255 - 30) / 40)


# -- CUB-200-2011 --------------------------------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(root: Path, per_class: int = 4, boxes: bool = True) -> Path:
    """CUB_200_2011 layout: 3 classes x ``per_class`` images, every other image a training image.

    Image ``k`` of each class alternates JPEG / PNG (``.jpg`` and ``.png`` names). Returns the root.
    """
    root.mkdir(parents=True, exist_ok=True)
    images, labels, split, box_lines = [], [], [], []
    image_id = 0
    for c, name in enumerate(CUB_CLASSES):
        for k in range(per_class):
            image_id += 1
            ext, fmt = (".jpg", "JPEG") if k % 2 == 0 else (".png", "PNG")
            rel = f"{name}/{name.split('.')[1]}_{k:04d}{ext}"
            write_image(root / "images" / rel, c, fmt)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if k % 2 == 0 else 0}")
            box_lines.append(f"{image_id} {1.0 + k} 2.0 {10.5 + c} 8.0")
    (root / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(CUB_CLASSES)))
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    if boxes:
        (root / "bounding_boxes.txt").write_text("\n".join(box_lines) + "\n")
    return root


# -- Stanford Dogs -------------------------------------------------------------------------------------------------

DOG_CLASSES = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def _cell_of_strings(strings: list[str]) -> np.ndarray:
    """A MATLAB N x 1 cell array of strings, as in the official lists (loadmat gives arrays of arrays)."""
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = np.array([s])
    return cell


def write_dogs_list(path: Path, files: list[str], labels: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(
        path,
        {
            "file_list": _cell_of_strings(files),
            "annotation_list": _cell_of_strings([f.rsplit(".", 1)[0] for f in files]),
            "labels": np.array(labels, dtype=np.float64).reshape(-1, 1),
        },
    )


def make_dogs(root: Path, per_class: int = 3, lists_folder: bool = True) -> Path:
    """Stanford Dogs layout: Images/<wnid-breed>/<wnid>_<n>.jpg and train/test lists (1-based labels).

    The last image of each class is a test image; one image per class is PNG data under a ``.jpg`` name.
    """
    train, test = ([], []), ([], [])
    for c, folder in enumerate(DOG_CLASSES):
        wnid = folder.split("-")[0]
        for k in range(per_class):
            rel = f"{folder}/{wnid}_{1000 + k}.jpg"
            write_image(root / "Images" / rel, c, "PNG" if k == 1 else "JPEG")
            files, labels = test if k == per_class - 1 else train
            files.append(rel)
            labels.append(c + 1)
    lists = root / "lists" if lists_folder else root
    write_dogs_list(lists / "train_list.mat", *train)
    write_dogs_list(lists / "test_list.mat", *test)
    return root


# -- Stanford Cars (torchvision layout) ---------------------------------------------------------------------------

CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _cars_annotations(path: Path, entries: list[tuple[str, int]]) -> None:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    records = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (fname, class_id) in enumerate(entries):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 15, 12)]
        records[0, i] = (*box, np.array([[class_id]], dtype=np.uint8), np.array([fname]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(path, {"annotations": records})


def make_cars(root: Path) -> Path:
    """torchvision's StanfordCars layout under ``root/stanford_cars``: 3 classes, 6 train and 3 test images."""
    base = root / "stanford_cars"
    names = np.empty((1, len(CAR_CLASSES)), dtype=object)
    names[0, :] = CAR_CLASSES
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [(f"{i + 1:05d}.jpg", i % 3 + 1) for i in range(6)]
    test = [(f"{i + 1:05d}.jpg", i % 3 + 1) for i in range(3)]
    for folder, entries in (("cars_train", train), ("cars_test", test)):
        for i, (fname, class_id) in enumerate(entries):
            write_image(base / folder / fname, class_id - 1, "PNG" if i == 0 else "JPEG")
    _cars_annotations(base / "devkit" / "cars_train_annos.mat", train)
    _cars_annotations(base / "cars_test_annos_withlabels.mat", test)
    return root


# -- FGVC-Aircraft (official 2013b layout, as torchvision reads it) -----------------------------------------------

AIRCRAFT_VARIANTS = ["707-320", "A300B4", "F/A-18"]
AIRCRAFT_FAMILIES = ["Boeing 707", "A300", "F/A-18"]


def make_aircraft(root: Path) -> Path:
    """fgvc-aircraft-2013b/data with 3 variants (= 3 families): per class 2 train, 1 val, 1 test images."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    (data / "families.txt").write_text("\n".join(AIRCRAFT_FAMILIES) + "\n")
    (data / "manufacturers.txt").write_text("Boeing\nAirbus\nMcDonnell Douglas\n")
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for c in range(3):
        for split in ("train", "train", "val", "test"):
            image_id += 1
            write_image(data / "images" / f"{image_id:07d}.jpg", c, "PNG" if split == "val" else "JPEG")
            lines[split].append((f"{image_id:07d}", c))
    lines["trainval"] = lines["train"] + lines["val"]
    for split, entries in lines.items():
        for level, names in (("variant", AIRCRAFT_VARIANTS), ("family", AIRCRAFT_FAMILIES)):
            text = "".join(f"{i} {names[c]}\n" for i, c in entries)
            (data / f"images_{level}_{split}.txt").write_text(text)
    return root


# -- Oxford Flowers-102 (torchvision layout) ----------------------------------------------------------------------


def make_flowers(root: Path) -> tuple[Path, dict[str, list[int]], list[int]]:
    """flowers-102/jpg, imagelabels.mat and setid.mat: 102 training images (one per class), 3 val, 4 test.

    Returns the root, the split ids and the 1-based labels of all images.
    """
    base = root / "flowers-102"
    num_train, num_val, num_test = 102, 3, 4
    labels = list(range(1, 103)) + [5, 6, 7] + [1, 2, 3, 102]
    ids = {
        "trnid": list(range(1, num_train + 1)),
        "valid": list(range(num_train + 1, num_train + num_val + 1)),
        "tstid": list(range(num_train + num_val + 1, num_train + num_val + num_test + 1)),
    }
    for image_id, label in enumerate(labels, 1):
        fmt = "PNG" if image_id % 10 == 0 else "JPEG"
        write_image(base / "jpg" / f"image_{image_id:05d}.jpg", (label - 1) % 6, fmt, size=(8, 8))
    sio.savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    sio.savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return root, ids, labels


# -- generic folder layout ----------------------------------------------------------------------------------------


def make_folder(root: Path, eval_split: str | None = "val", classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    """root/train/<class>/* (3 images per class, one PNG) and root/<eval_split>/<class>/* (1 per class)."""
    for c, name in enumerate(classes):
        for k in range(3):
            ext, fmt = (".png", "PNG") if k == 2 else (".jpg", "JPEG")
            write_image(root / "train" / name / f"{name}_{k}{ext}", c, fmt)
        if eval_split:
            write_image(root / eval_split / name / f"{name}_eval.jpg", c)
    (root / "train" / "cat" / "notes.txt").write_text("not an image: ignored by extension\n")
    return root
