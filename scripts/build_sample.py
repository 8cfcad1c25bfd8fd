"""Rebuild the bundled real-photo sample in `samtok_rl/assets/sample/`.

Every pixel comes from photographs that ship inside PyPI wheels, so the sample can be rebuilt offline:
- scikit-image 0.26.0 (`skimage/data/`): astronaut, coffee, coins, chelsea, horse;
- imgaug 0.4.0 (`imgaug/quokka.jpg` + `quokka_annotations.json`, with its real polygon). imgaug is never imported
  (it breaks on numpy 2): its files are located with `importlib.util.find_spec`.

Masks come from the imgaug polygon, simple segmentation (coins: Otsu threshold + connected components; the coffee
surface: an HSV threshold as in golden A's README; horse: the silhouette the image itself is) or hand-placed polygons
(astronaut, coffee cup/saucer/spoon, chelsea); the expressions and captions are hand-written.

The result uses the original on-disk formats so the readers run on it unchanged:
- gRefCOCO: `grefcoco/grefs(unc).json` + `grefcoco/instances.json`;
- GranD-f: `grandf/annotations/train/GranDf_HA_GCG_train.json` and the val_test pair
  `grandf/annotations/val_test/val_gcg_coco_{caption,mask}_gt.json`;
- one `images/` folder of JPEGs (longest side <= 512 px) shared by both.

Usage (needs `pip install scikit-image==0.26.0` and `pip install --no-deps imgaug==0.4.0`):

    python scripts/build_sample.py [--out samtok_rl/assets/sample]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage import color, filters, measure, morphology
from skimage.draw import ellipse, polygon


SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
# find_spec on a top-level name does not execute the package, so imgaug's numpy-1-only code never runs.
IMGAUG_DIR = Path(importlib.util.find_spec("imgaug").submodule_search_locations[0])
MAX_SIDE = 512
JPEG_QUALITY = 85


# ---------------------------------------------------------------------------------------------------------------------
# Images and masks, all in the coordinates of the saved (resized) image.


def load_rgb(path: Path) -> np.ndarray:
    """Load an image as RGB uint8, resized (bicubic) so the longest side is at most MAX_SIDE."""
    img = Image.open(path).convert("RGB")
    scale = min(1.0, MAX_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    return np.asarray(img)


def poly_mask(shape, xy, scale=1.0) -> np.ndarray:
    xy = np.asarray(xy, dtype=float) * scale
    rr, cc = polygon(xy[:, 1], xy[:, 0], shape[:2])
    m = np.zeros(shape[:2], bool)
    m[rr, cc] = True
    return m


def ellipse_mask(shape, cx, cy, rx, ry, scale=1.0) -> np.ndarray:
    rr, cc = ellipse(cy * scale, cx * scale, ry * scale, rx * scale, shape=shape[:2])
    m = np.zeros(shape[:2], bool)
    m[rr, cc] = True
    return m


def clean(m: np.ndarray, radius: int = 2) -> np.ndarray:
    """Opening, largest component, hole filling: a tidy single-object mask from a threshold."""
    m = ndimage.binary_opening(m, structure=morphology.disk(radius))
    labels = measure.label(m)
    if labels.max() > 1:
        m = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(m)


def polygon_of(m: np.ndarray) -> list[float]:
    """The largest outer contour of a mask as a flat COCO polygon (used for hand-drawn shapes)."""
    contour = max(measure.find_contours(np.pad(m, 1).astype(float), 0.5), key=len) - 1
    contour = measure.approximate_polygon(contour, tolerance=1.0)
    return [round(float(v), 1) for rc in contour for v in (rc[1], rc[0])]


def rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("utf-8")}


def build_images():
    """Return {name: (rgb, {object: (mask, 'polygon' | 'rle')})} for the six sample photos."""
    out = {}

    # Astronaut (512x512, no resize): hand-placed polygons and ellipses.
    img = load_rgb(SKIMAGE_DATA / "astronaut.png")
    s = img.shape
    person = poly_mask(
        s,
        [
            (225, 14),
            (280, 30),
            (300, 80),
            (292, 130),
            (300, 180),
            (305, 240),
            (340, 270),
            (355, 300),
            (362, 345),
            (292, 398),
            (282, 512),
            (22, 512),
            (18, 420),
            (30, 330),
            (55, 270),
            (115, 205),
            (122, 172),
            (165, 140),
            (152, 92),
            (170, 40),
        ],
    )
    helmet = ellipse_mask(s, 395, 440, 118, 95)
    out["astronaut"] = (
        img,
        {
            "person": (person & ~helmet, "polygon"),
            "flag": (
                poly_mask(
                    s, [(0, 0), (48, 0), (72, 110), (95, 210), (60, 258), (32, 300), (20, 420), (12, 512), (0, 512)]
                ),
                "polygon",
            ),
            "shuttle": (
                poly_mask(
                    s,
                    [
                        (398, 2),
                        (432, 2),
                        (446, 45),
                        (455, 200),
                        (462, 262),
                        (440, 276),
                        (372, 276),
                        (356, 226),
                        (380, 182),
                        (382, 80),
                    ],
                ),
                "polygon",
            ),
            "helmet": (helmet, "polygon"),
            "patch": (ellipse_mask(s, 171, 385, 38, 37), "polygon"),
        },
    )

    # Coffee (400x600 -> 341x512): the coffee surface by HSV threshold (golden A's recipe), the rest hand-placed.
    img = load_rgb(SKIMAGE_DATA / "coffee.png")
    s, k = img.shape, img.shape[1] / 600
    hsv = color.rgb2hsv(img)
    surface = (hsv[..., 2] > 0.72) & (hsv[..., 0] > 0.06) & (hsv[..., 0] < 0.13) & (hsv[..., 1] > 0.55)
    surface = clean(surface & ellipse_mask(s, 287, 143, 90, 55, k))
    spoon = poly_mask(
        s,
        [
            (400, 68),
            (421, 70),
            (411, 110),
            (396, 170),
            (386, 215),
            (404, 252),
            (406, 298),
            (386, 320),
            (356, 326),
            (330, 310),
            (326, 280),
            (340, 255),
            (364, 236),
            (374, 200),
            (388, 150),
            (398, 95),
        ],
        k,
    )
    cup = poly_mask(
        s,
        [
            (175, 60),
            (200, 30),
            (260, 18),
            (330, 18),
            (390, 35),
            (410, 80),
            (405, 160),
            (385, 205),
            (345, 240),
            (320, 262),
            (290, 275),
            (258, 280),
            (236, 300),
            (205, 305),
            (195, 280),
            (200, 245),
            (185, 190),
            (178, 130),
        ],
        k,
    )
    saucer = ellipse_mask(s, 278, 228, 202, 160, k)
    out["coffee"] = (
        img,
        {
            "coffee": (surface, "rle"),
            "cup": (cup & ~spoon, "polygon"),
            "spoon": (spoon, "polygon"),
            "saucer": (saucer & ~cup & ~spoon, "polygon"),
        },
    )

    # Coins (303x384 grayscale, stacked to RGB): Otsu + connected components give one mask per coin.
    gray = np.asarray(Image.open(SKIMAGE_DATA / "coins.png").convert("L"))
    fg = gray > filters.threshold_otsu(gray)
    fg = ndimage.binary_fill_holes(ndimage.binary_closing(fg, structure=morphology.disk(2)))
    labels = measure.label(morphology.remove_small_objects(fg, max_size=200))
    coins = [labels == i for i in range(1, labels.max() + 1)]
    coins = [c for c in coins if 300 < c.sum() < 6000]  # drop edge slivers and merged blobs
    coins.sort(key=lambda c: (round(ndimage.center_of_mass(c)[0] / 60), ndimage.center_of_mass(c)[1]))
    out["coins"] = (np.repeat(gray[..., None], 3, axis=2), {f"coin{i}": (c, "rle") for i, c in enumerate(coins)})

    # Quokka (960x643 -> 512x343) with imgaug's real 39-vertex polygon.
    img = load_rgb(IMGAUG_DIR / "quokka.jpg")
    s, k = img.shape, img.shape[1] / 960
    ann = json.loads((IMGAUG_DIR / "quokka_annotations.json").read_text())
    quokka = poly_mask(s, [(p["x"], p["y"]) for p in ann["polygons"][0]["keypoints"]], k)
    out["quokka"] = (img, {"quokka": (quokka, "polygon"), "ground": (~quokka, "rle")})

    # Chelsea (300x451): hand-placed eyes, nose and cat outline.
    img = load_rgb(SKIMAGE_DATA / "chelsea.png")
    s = img.shape
    eyes = {"eye_left": ellipse_mask(s, 171, 114, 36, 30), "eye_right": ellipse_mask(s, 318, 137, 27, 27)}
    out["chelsea"] = (
        img,
        {
            "cat": (
                poly_mask(
                    s,
                    [(0, 20), (40, 0), (395, 0), (362, 60), (355, 140), (375, 200), (398, 262), (412, 300), (0, 300)],
                ),
                "polygon",
            ),
            **{name: (m, "polygon") for name, m in eyes.items()},
            "nose": (poly_mask(s, [(236, 232), (292, 229), (281, 250), (263, 266), (247, 251)]), "polygon"),
        },
    )

    # Horse (328x400 silhouette drawing): the image is its own mask.
    img = load_rgb(SKIMAGE_DATA / "horse.png")
    out["horse"] = (img, {"horse": (clean(img.mean(axis=2) < 128, radius=1), "rle")})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Hand-written annotations.

# (image, split, [object names] or [] for no target, [sentences])
REFS = [
    ("astronaut", "train", ["person"], ["the astronaut in the orange suit", "the smiling woman"]),
    ("astronaut", "train", ["flag", "helmet"], ["the flag and the helmet"]),
    ("astronaut", "train", [], ["the dog next to the woman"]),
    ("coffee", "train", ["cup"], ["the coffee cup"]),
    ("coffee", "train", ["spoon", "coffee"], ["the spoon and the coffee"]),
    ("coins", "train", "bottom_row", ["the coins in the bottom row"]),
    ("coins", "train", ["coin0"], ["the top left coin"]),
    ("coins", "train", [], ["the banknote"]),
    ("quokka", "train", ["quokka"], ["the quokka", "the small furry animal"]),
    ("chelsea", "val", ["eye_left", "eye_right"], ["both eyes of the cat"]),
    ("chelsea", "val", ["nose"], ["the cat's nose"]),
    ("chelsea", "val", [], ["the mouse"]),
    ("horse", "val", ["horse"], ["the black horse"]),
]

# (image, caption, [(phrase as it appears in the caption, [object names])])
GCG_TRAIN = [
    (
        "astronaut",
        "An astronaut in an orange suit smiles in front of an American flag, with a space shuttle model "
        "and a helmet beside her.",
        [
            ("An astronaut in an orange suit", ["person"]),
            ("an American flag", ["flag"]),
            ("a space shuttle model", ["shuttle"]),
            ("a helmet", ["helmet"]),
        ],
    ),
    (
        "coffee",
        "A cup of coffee sits on a red saucer with a spoon resting beside it.",
        [("A cup of coffee", ["cup"]), ("a red saucer", ["saucer"]), ("a spoon", ["spoon"])],
    ),
    (
        "quokka",
        "A quokka stands on the sandy ground and looks at the camera.",
        [("A quokka", ["quokka"]), ("the sandy ground", ["ground"])],
    ),
    ("coins", "Several old coins are laid out in rows on a dark surface.", [("Several old coins", "all_coins")]),
]
GCG_VAL = [
    (
        "chelsea",
        "A tabby cat with green eyes looks into the camera.",
        [("A tabby cat", ["cat"]), ("green eyes", ["eye_left", "eye_right"])],
    ),
    ("horse", "A black horse is walking to the right.", [("A black horse", ["horse"])]),
]


README = """# Bundled real-photo sample (generated by `scripts/build_sample.py`; do not edit by hand)

{n_images} real photos from PyPI wheels, annotated in the original gRefCOCO and GranD-f formats so the readers in
`samtok_rl.data` run on it unchanged. Find the paths with `samtok_rl.data.sample_paths()`.

| path | format | content |
|---|---|---|
| `images/*.jpg` | JPEG, longest side <= 512 px | astronaut, coffee, coins, chelsea, horse (scikit-image 0.26.0 `skimage/data/`), quokka (imgaug 0.4.0) |
| `grefcoco/grefs(unc).json` + `grefcoco/instances.json` | gRefCOCO refs + COCO instances | {n_refs} refs, {n_sent} sentences (splits train/val; single-, multi- and no-target; one bare-int `ann_id`) |
| `grandf/annotations/train/GranDf_HA_GCG_train.json` | GranD-f HA GCG train | {n_train} captions with phrase spans and RLE masks |
| `grandf/annotations/val_test/val_gcg_coco_{{caption,mask}}_gt.json` | GranD-f val/test GT pair | {n_val} captions, one mask per label |

Masks: the quokka uses imgaug's real polygon annotation; coins are Otsu threshold + connected components; the coffee
surface is an HSV threshold; the horse mask is the silhouette image itself; the rest (astronaut, cup, saucer, spoon,
cat, eyes, nose) are hand-placed polygons and ellipses, so their boundaries are approximate. Expressions and captions
are hand-written. The scikit-image images are public domain / CC0 (see scikit-image's documentation of
`skimage.data`); the quokka photo ships in the MIT-licensed imgaug 0.4.0 wheel.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "samtok_rl/assets/sample")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)

    data = build_images()
    coin_names = [n for n in data["coins"][1]]
    bottom_y = max(ndimage.center_of_mass(data["coins"][1][n][0])[0] for n in coin_names)
    groups = {
        ("coins", "bottom_row"): [
            n for n in coin_names if ndimage.center_of_mass(data["coins"][1][n][0])[0] > bottom_y - 30
        ],
        ("coins", "all_coins"): coin_names,
    }

    # COCO instances: one image record per photo, one annotation per object.
    images, annotations, ann_ids = [], [], {}
    for image_id, (name, (rgb, objects)) in enumerate(data.items(), start=1):
        Image.fromarray(rgb).save(out / "images" / f"{name}.jpg", quality=JPEG_QUALITY, optimize=True)
        h, w = rgb.shape[:2]
        images.append({"id": image_id, "file_name": f"{name}.jpg", "height": h, "width": w})
        for obj, (m, kind) in objects.items():
            ann_id = len(annotations) + 1
            ann_ids[(name, obj)] = ann_id
            r = rle(m)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": [polygon_of(m)] if kind == "polygon" else r,
                    "area": int(mask_utils.area(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))),
                    "bbox": [
                        round(float(v), 1)
                        for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))
                    ],
                }
            )
    image_ids = {img["file_name"][:-4]: img["id"] for img in images}
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}

    refs, sent_id = [], 0
    for ref_id, (name, split, objects, sentences) in enumerate(REFS):
        objects = groups[(name, objects)] if isinstance(objects, str) else objects
        ids = [ann_ids[(name, o)] for o in objects] or [-1]
        sents = []
        for sent in sentences:
            sents.append({"sent_id": sent_id, "sent": sent, "raw": sent, "tokens": sent.split()})
            sent_id += 1
        refs.append(
            {
                "ref_id": ref_id,
                "image_id": image_ids[name],
                "split": split,
                # ReLA's files use a bare int for some single-target refs; keep one such case (the horse).
                "ann_id": ids[0] if name == "horse" else ids,
                "category_id": [-1] if ids == [-1] else [1] * len(ids),
                "no_target": ids == [-1],
                "sentences": sents,
                "sent_ids": [s["sent_id"] for s in sents],
                "file_name": f"{name}.jpg",
            }
        )
    (out / "grefcoco").mkdir()
    (out / "grefcoco" / "grefs(unc).json").write_text(json.dumps(refs))
    (out / "grefcoco" / "instances.json").write_text(json.dumps(instances))

    def masks_of(name, objects):
        objects = groups[(name, objects)] if isinstance(objects, str) else objects
        return [data[name][1][o][0] for o in objects]

    train = []
    for name, caption, phrases in GCG_TRAIN:
        h, w = data[name][0].shape[:2]
        groundings = {}
        for phrase, objects in phrases:
            start = caption.index(phrase)
            # GranD-f keeps a phrase's pieces as separate RLEs; readers union them.
            groundings[phrase] = {
                "token_positives": [start, start + len(phrase)],
                "rle_masks": [rle(m) for m in masks_of(name, objects)],
            }
        train.append(
            {
                "file_name": f"{name}.jpg",
                "height": h,
                "width": w,
                "image_id": image_ids[name],
                "caption": caption,
                "groundings": groundings,
            }
        )
    (out / "grandf/annotations/train").mkdir(parents=True)
    (out / "grandf/annotations/train/GranDf_HA_GCG_train.json").write_text(json.dumps(train))

    cap_gt = {"images": [], "annotations": []}
    mask_gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for name, caption, phrases in GCG_VAL:
        h, w = data[name][0].shape[:2]
        record = {"id": name, "file_name": f"{name}.jpg", "height": h, "width": w}
        cap_gt["images"].append(record)
        mask_gt["images"].append(record)
        cap_gt["annotations"].append(
            {
                "id": len(cap_gt["annotations"]) + 1,
                "image_id": name,
                "caption": caption,
                "labels": [p for p, _ in phrases],
            }
        )
        for _, objects in phrases:
            union = np.any(masks_of(name, objects), axis=0)
            r = rle(union)
            mask_gt["annotations"].append(
                {
                    "id": len(mask_gt["annotations"]) + 1,
                    "image_id": name,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": r,
                    "area": int(union.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox({"size": r["size"], "counts": r["counts"].encode()})],
                }
            )
    (out / "grandf/annotations/val_test").mkdir(parents=True)
    (out / "grandf/annotations/val_test/val_gcg_coco_caption_gt.json").write_text(json.dumps(cap_gt))
    (out / "grandf/annotations/val_test/val_gcg_coco_mask_gt.json").write_text(json.dumps(mask_gt))

    (out / "README.md").write_text(
        README.format(
            n_images=len(images),
            n_sent=sum(len(r["sentences"]) for r in refs),
            n_refs=len(refs),
            n_train=len(train),
            n_val=len(GCG_VAL),
        )
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"wrote {out}: {len(images)} images, {sum(len(r['sentences']) for r in refs)} GRES sentences, "
        f"{len(train)} GCG train + {len(GCG_VAL)} GCG val captions, {total:,} bytes"
    )


if __name__ == "__main__":
    main()
