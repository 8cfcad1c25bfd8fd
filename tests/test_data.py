"""Readers on the bundled real-photo sample, malformed-input errors, and `samtok-rl prepare` end to end."""

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samtok_rl.data import DataError, read_grandf_gcg, read_grandf_gcg_gt, read_grefcoco, sample_paths
from samtok_rl.errors import UsageError
from samtok_rl.files import open_rgb, to_rgb
from samtok_rl.masks import decode_rle, rle_box_centre
from samtok_rl.parsing import parse_gcg, parse_masks
from samtok_rl.prepare import gcg_solution, gres_solution, load_prepared, prepare, read_source, select_one_per_image
from samtok_rl.prompts import R1_SUFFIX


P = sample_paths()


@pytest.fixture(scope="module")
def gres():
    return read_grefcoco(P.grefcoco_refs, P.grefcoco_instances, P.images)


@pytest.fixture(scope="module")
def gcg():
    return read_grandf_gcg(P.grandf_train, P.images)


# --------------------------------------------------------------------------------------------------- the sample


def test_sample_is_small_and_complete():
    files = [p for p in P.root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
    assert len(list(P.images.glob("*.jpg"))) == 6
    for path in (P.grefcoco_refs, P.grefcoco_instances, P.grandf_train, P.grandf_val_caption, P.grandf_val_mask):
        assert path.is_file(), path


def test_grefcoco_rows(gres):
    # 13 refs, 15 sentences: one row per sentence, not per ref.
    assert len(gres) == 15
    assert gres["split"].count("train") == 11 and gres["split"].count("val") == 4
    assert len(read_grefcoco(P.grefcoco_refs, P.grefcoco_instances, P.images, splits="val")) == 4
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in gres["image"])
    # The two sentences of the quokka ref share its single mask.
    quokka = [r for r in gres if "quokka" in r["image"]]
    assert [r["expression"] for r in quokka] == ["the quokka", "the small furry animal"]
    assert quokka[0]["gt_masks"] == quokka[1]["gt_masks"] and len(quokka[0]["gt_masks"]) == 1
    # The horse ref stores ann_id as a bare int; it is normalised to a list.
    horse = next(r for r in gres if "horse" in r["image"])
    assert len(horse["ann_ids"]) == 1 and not horse["no_target"]


def test_grefcoco_no_target(gres):
    no_target = [r for r in gres if r["no_target"]]
    assert sorted(r["expression"] for r in no_target) == ["the banknote", "the dog next to the woman", "the mouse"]
    assert all(r["gt_masks"] == [] and r["ann_ids"] == [] for r in no_target)
    assert all(r["gt_masks"] for r in gres if not r["no_target"])


def test_grefcoco_multi_target_order(gres):
    multi = [r for r in gres if len(r["gt_masks"]) > 1]
    assert len(multi) >= 2
    for row in multi:
        centres = [rle_box_centre(m) for m in row["gt_masks"]]
        assert centres == sorted(centres), row["expression"]  # box centre x first, then y
    # The ref lists [spoon, coffee]; the coffee surface lies left of the spoon, so it comes first.
    refs = json.loads(P.grefcoco_refs.read_text())
    listed = next(r["ann_id"] for r in refs if r["sentences"][0]["sent"] == "the spoon and the coffee")
    row = next(r for r in gres if r["expression"] == "the spoon and the coffee")
    assert row["ann_ids"] == listed[::-1]
    coins = next(r for r in gres if r["expression"] == "the coins in the bottom row")
    assert len(coins["gt_masks"]) == 6


def test_grefcoco_masks_match_images(gres):
    from PIL import Image

    for row in gres:
        width, height = Image.open(row["image"]).size
        for rle in row["gt_masks"]:
            m = decode_rle(rle)
            assert m.shape == (height, width) and m.any()


def test_gcg_phrases_and_masks(gcg):
    assert len(gcg) == 4
    for row in gcg:
        assert len(row["phrases"]) == len(row["spans"]) == len(row["gt_masks"]) >= 1
        assert [row["caption"][s:e] for s, e in row["spans"]] == row["phrases"]
        starts = [s for s, _ in row["spans"]]
        assert starts == sorted(starts)
    # A phrase with several RLEs gets their union: "Several old coins" covers every coin instance.
    coins = next(r for r in gcg if "coins" in r["image"])
    raw = json.loads(P.grandf_train.read_text())
    pieces = next(r for r in raw if r["file_name"] == "coins.jpg")["groundings"]["Several old coins"]["rle_masks"]
    assert len(pieces) > 1
    assert (decode_rle(coins["gt_masks"][0]) == np.any([decode_rle(p) for p in pieces], axis=0)).all()
    # Phrase order follows the caption even when the JSON keys come in another order.
    astronaut = next(r for r in gcg if "astronaut" in r["image"])
    assert astronaut["phrases"] == [
        "An astronaut in an orange suit",
        "an American flag",
        "a space shuttle model",
        "a helmet",
    ]


def test_gcg_val_test_pair():
    ds = read_grandf_gcg_gt(P.grandf_val_caption, P.grandf_val_mask, P.images)
    assert len(ds) == 2
    cat = next(r for r in ds if r["image_id"] == "chelsea")
    assert cat["phrases"] == ["A tabby cat", "green eyes"] and len(cat["gt_masks"]) == 2


# --------------------------------------------------------------------------------------------------- malformed inputs


@pytest.fixture
def copy_sample(tmp_path):
    root = tmp_path / "sample"
    shutil.copytree(P.root, root)
    return root


def _refs(root):
    return root / "grefcoco" / "grefs(unc).json", root / "grefcoco" / "instances.json"


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_grefcoco_missing_image(copy_sample):
    (copy_sample / "images" / "coffee.jpg").unlink()
    refs, instances = _refs(copy_sample)
    with pytest.raises(DataError, match=r"grefs\(unc\)\.json: ref #3 \(ref_id=3\).*image file not found.*coffee\.jpg"):
        read_grefcoco(refs, instances, copy_sample / "images")
    with pytest.warns(UserWarning, match=r"skipped 2 invalid row"):
        ds = read_grefcoco(refs, instances, copy_sample / "images", skip_invalid=True)
    assert len(ds) == 13


def test_grefcoco_rle_size_mismatch(copy_sample):
    refs, instances = _refs(copy_sample)

    def shrink(data):
        ann = next(a for a in data["annotations"] if a["id"] == 10)  # the top-left coin, stored as RLE
        ann["segmentation"]["size"] = [100, 100]

    _edit(instances, shrink)
    with pytest.raises(
        DataError, match=r"grefs\(unc\)\.json: ref #6 \(ref_id=6\), annotation 10 of .*instances.json: .*size \[100, 100\]"
    ):
        read_grefcoco(refs, instances, copy_sample / "images")
    with pytest.warns(UserWarning, match="skipped 1 invalid row"):
        assert len(read_grefcoco(refs, instances, copy_sample / "images", skip_invalid=True)) == 14


def test_grefcoco_image_size_mismatch(copy_sample):
    refs, instances = _refs(copy_sample)
    _edit(instances, lambda d: d["images"][0].update(height=999))
    with pytest.raises(DataError, match=r"ref #0 \(ref_id=0\): image .*astronaut\.jpg is 512x512 .* says 999x512"):
        read_grefcoco(refs, instances, copy_sample / "images")


def test_grefcoco_empty_expression(copy_sample):
    refs, instances = _refs(copy_sample)
    _edit(refs, lambda d: d[8]["sentences"][1].update(sent="  "))
    with pytest.raises(DataError, match=r"ref #8 \(ref_id=8\), sentence #1 \(sent_id=\d+\): field 'sent' is empty"):
        read_grefcoco(refs, instances, copy_sample / "images")
    with pytest.warns(UserWarning, match="skipped 1 invalid row"):
        ds = read_grefcoco(refs, instances, copy_sample / "images", skip_invalid=True)
    assert "the quokka" in ds["expression"] and len(ds) == 14


def test_grefcoco_crowd_short_polygons_and_minus_one(copy_sample):
    refs, instances = _refs(copy_sample)

    def edit(data):
        anns = {a["id"]: a for a in data["annotations"]}
        anns[4]["iscrowd"] = 1  # the helmet of the "flag and helmet" ref: skipped, the flag stays
        anns[2]["segmentation"].append([1.0, 1.0, 5.0, 5.0])  # a 2-point polygon on the flag: dropped
        # An annotation with id -1 must never be used for no-target refs.
        data["annotations"].append({**anns[1], "id": -1})

    _edit(instances, edit)
    ds = read_grefcoco(refs, instances, copy_sample / "images")
    original = read_grefcoco(P.grefcoco_refs, P.grefcoco_instances, P.images)
    row = next(r for r in ds if r["expression"] == "the flag and the helmet")
    before = next(r for r in original if r["expression"] == "the flag and the helmet")
    assert row["ann_ids"] == [2] and row["gt_masks"] == before["gt_masks"][:1]
    assert all(r["gt_masks"] == [] for r in ds if r["no_target"])

    # A target ref whose only annotation is crowd is an error, not a silent no-target row.
    _edit(instances, lambda d: next(a for a in d["annotations"] if a["id"] == 7).update(iscrowd=1))
    with pytest.raises(DataError, match=r"ref #3 \(ref_id=3\): none of the target annotations \[7\]"):
        read_grefcoco(refs, instances, copy_sample / "images")


def test_grandf_missing_image(copy_sample):
    ann = copy_sample / "grandf/annotations/train/GranDf_HA_GCG_train.json"
    (copy_sample / "images" / "quokka.jpg").unlink()
    with pytest.raises(
        DataError, match=r"GranDf_HA_GCG_train\.json: record #2 \(file_name='quokka\.jpg'\): image file not found"
    ):
        read_grandf_gcg(ann, copy_sample / "images")
    with pytest.warns(UserWarning, match="skipped 1 invalid row"):
        assert len(read_grandf_gcg(ann, copy_sample / "images", skip_invalid=True)) == 3


def test_grandf_rle_size_mismatch(copy_sample):
    ann = copy_sample / "grandf/annotations/train/GranDf_HA_GCG_train.json"
    _edit(ann, lambda d: d[1]["groundings"]["a spoon"]["rle_masks"][0].update(size=[10, 20]))
    with pytest.raises(
        DataError,
        match=r"record #1 \(file_name='coffee\.jpg'\), grounding 'a spoon', rle_masks\[0\]: RLE size \[10, 20\]",
    ):
        read_grandf_gcg(ann, copy_sample / "images")


def test_grandf_empty_caption(copy_sample):
    ann = copy_sample / "grandf/annotations/train/GranDf_HA_GCG_train.json"
    _edit(ann, lambda d: d[3].update(caption='" "'))
    with pytest.raises(DataError, match=r"record #3 \(file_name='coins\.jpg'\): field 'caption' is empty"):
        read_grandf_gcg(ann, copy_sample / "images")


def test_grandf_val_test_rle_size_mismatch(copy_sample):
    caps = copy_sample / "grandf/annotations/val_test/val_gcg_coco_caption_gt.json"
    masks = copy_sample / "grandf/annotations/val_test/val_gcg_coco_mask_gt.json"
    _edit(masks, lambda d: d["annotations"][0]["segmentation"].update(size=[1, 1]))
    with pytest.raises(DataError, match=r"val_gcg_coco_mask_gt\.json: annotation id=1: RLE size \[1, 1\]"):
        read_grandf_gcg_gt(caps, masks, copy_sample / "images")


# --------------------------------------------------------------------------------------------------- prepare


def test_select_one_per_image_matches_reference():
    images = ["a", "b", "a", "c", "d", "b", "e", "c"]
    picked = select_one_per_image(images, num_images=3, seed=42)
    # The reference procedure, spelled out.
    groups = {}
    for i, img in enumerate(images):
        groups.setdefault(img, []).append(i)
    order = list(groups.values())
    random.seed(42)
    chosen = random.sample(range(len(order)), 3)
    random.seed(42)
    expected = [random.choice(order[i]) for i in sorted(chosen)]
    assert picked == expected
    assert len({images[i] for i in picked}) == 3
    assert len(select_one_per_image(images, num_images=4000)) == 5  # more than available: every image once


def test_solutions_format():
    assert gres_solution([], "x") == "No target."
    text = gres_solution([(3, 4), (5, 6)], 'the "left" cup')
    assert parse_masks(text) == [(3, 4), (5, 6)]
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```"))[0]["label"] == 'the "left" cup'
    text = gcg_solution("A cat and a dog.", [[0, 5], [10, 15]], [(1, 2), (3, 4)])
    assert text == (
        "<|object_ref_start|> A cat <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|> and "
        "<|object_ref_start|> a dog <|object_ref_end|> <|mt_start|><|mt_0003|><|mt_0260|><|mt_end|>."
    )
    # Removing the tags leaves GLaMM's space before the full stop ("a dog ."), as the reference eval sees it.
    assert parse_gcg(text) == ("A cat and a dog .", ["A cat", "a dog"], [(1, 2), (3, 4)])


@pytest.fixture(scope="module")
def micro_tokenizer(golden_mask_tokenizer):
    return golden_mask_tokenizer


def test_prepare_gres_resumable(micro_tokenizer, tmp_path):
    source = read_source("gres", sample=True, split="val")  # 4 rows on 2 images: multi, single, no-target, single
    # Put the no-target row last, so shard 1 (shard_size 3) needs no encoding when it is redone below.
    source = source.select([0, 1, 3, 2])
    assert source["no_target"] == [False, False, False, True]
    calls = []

    def load():
        calls.append(1)
        return micro_tokenizer

    micro_tokenizer.clear_cache()  # it caches image features by content; count passes from a cold cache
    before = micro_tokenizer.encoder_passes
    ds = prepare(source, "gres", tmp_path, load, shard_size=3, progress=False)
    assert calls == [1]
    assert micro_tokenizer.encoder_passes - before == 2  # batched by image: one encoder pass per image
    assert len(ds) == 4 and set(ds["task"]) == {"gres"}
    for row in ds:
        assert parse_masks(row["solution"]) == [tuple(c) for c in row["gt_codes"]]
        assert len(row["gt_codes"]) == len(row["gt_masks"])
        assert row["no_target"] == (row["solution"] == "No target.")
        text = row["prompt"][0]["content"][1]["text"]
        assert text.startswith(f"Please segment {row['expression']} in this image.") and text.endswith(R1_SUFFIX)
    # Codes are the tokenizer's own, for the GT masks of that image.
    eyes = next(r for r in ds if r["expression"] == "both eyes of the cat")
    from PIL import Image

    rgb = np.asarray(Image.open(eyes["image"]).convert("RGB"))
    direct = micro_tokenizer.encode(rgb, np.stack([decode_rle(m) for m in eyes["gt_masks"]]))
    assert direct.tolist() == eyes["gt_codes"]

    shards = sorted((tmp_path / "data").glob("*.parquet"))
    assert len(shards) == 2
    mtimes = [p.stat().st_mtime_ns for p in shards]
    # A second run does no work: the tokenizer is not even loaded and no shard is rewritten.
    again = prepare(source, "gres", tmp_path, load, shard_size=3, progress=False)
    assert calls == [1] and [p.stat().st_mtime_ns for p in shards] == mtimes
    assert again.to_list() == load_prepared(tmp_path).to_list() == ds.to_list()

    # A lost shard is redone alone; other inputs in the same folder are refused.
    shards[1].unlink()
    prepare(source, "gres", tmp_path, load, shard_size=3, progress=False)
    assert calls == [1, 1] and shards[0].stat().st_mtime_ns == mtimes[0]
    with pytest.raises(ValueError, match="other inputs or settings"):
        prepare(source, "gres", tmp_path, load, shard_size=3, think=False, progress=False)


def test_prepare_gcg_cli(micro_tokenizer, golden_a, tmp_path, monkeypatch):
    from samtok_rl import cli
    from samtok_rl.mask_tokenizer import MaskTokenizer

    # The CLI builds its own tokenizer; hand it the module's instance to save a load.
    monkeypatch.setattr(MaskTokenizer, "from_files", classmethod(lambda cls, *a, **k: micro_tokenizer))
    out = tmp_path / "gcg"
    argv = ["prepare", "--task", "gcg", "--sample", "--num_images", "1", "--seed", "42", "--output_dir", str(out)]
    argv += ["--sam2_config", str(golden_a / "sam2_micro.yaml"), "--checkpoint", str(golden_a / "state_dict.safetensors")]
    assert cli.main([*argv, "--no_progress", "--device", "cpu"]) == 0
    ds = load_prepared(out)
    assert len(ds) == 1
    row = ds[0]
    caption, phrases, codes = parse_gcg(row["solution"])
    assert phrases == row["phrases"] and [tuple(c) for c in row["gt_codes"]] == codes
    assert len(row["gt_masks"]) == len(row["phrases"]) and row["expression"] == "" and not row["no_target"]
    assert "and highlight the phrases." in row["prompt"][0]["content"][1]["text"]


# --------------------------------------------------------------------------------------------------- images by value

GREY16 = np.array([[0, 257, 1000, 32768, 61420, 65535]], dtype=np.uint16)
GREY16_AS_8 = [0, 1, 4, 128, 239, 255]  # round(value / 257)


def _channels(image) -> np.ndarray:
    rgb = np.asarray(image)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    return rgb


@pytest.mark.parametrize(
    ("name", "write", "mode"),
    [
        ("grey16.png", lambda p: Image.fromarray(GREY16).save(p), "I;16"),
        ("grey16.tif", lambda p: Image.frombytes("I;16B", (6, 1), GREY16.astype(">u2").tobytes()).save(p), "I;16B"),
        # PIL opens 16-bit PGM/PPM as mode I (32-bit integers), values 0..65535.
        ("grey16.pgm", lambda p: Image.fromarray(GREY16).save(p), "I"),
    ],
)
def test_16_bit_images_are_scaled_not_clipped(tmp_path, name, write, mode):
    path = tmp_path / name
    write(path)
    with Image.open(path) as image:
        assert image.mode == mode
        assert np.asarray(image.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255, 255, 255]  # PIL clips
    rgb = _channels(open_rgb(path))
    assert rgb[0, :, 0].tolist() == GREY16_AS_8 and (rgb == rgb[..., :1]).all()  # grey in all three channels


def test_16_bit_gradient_keeps_its_order_and_spread(tmp_path):
    ramp = np.linspace(0, 61420, 1000).round().astype(np.uint16).reshape(10, 100)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    grey = _channels(open_rgb(tmp_path / "ramp.png"))[..., 0].ravel().astype(int)
    assert (np.diff(grey) >= 0).all() and grey[0] == 0 and grey[-1] == 239
    assert len(np.unique(grey)) == 240  # every 8-bit level from 0 to 239 is used: the spread survives
    assert np.abs(grey - ramp.ravel() / 257).max() <= 0.5


def test_pgm_with_a_small_maxval_is_read_by_value(tmp_path):
    # maxval 4095 (12-bit): PIL rescales the values to 0..65535 and opens the file as mode I.
    path = tmp_path / "grey12.pgm"
    path.write_bytes(b"P5 3 1 4095\n" + np.array([0, 2048, 4095], dtype=">u2").tobytes())
    assert _channels(open_rgb(path))[0, :, 0].tolist() == [0, 128, 255]


def test_8_bit_modes_convert_as_pil_does(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 150, 100])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=0)  # the transparent entry keeps its colour
    Image.new("RGBA", (2, 1), (200, 100, 50, 0)).save(tmp_path / "rgba.png")
    Image.new("LA", (2, 1), (100, 0)).save(tmp_path / "la.png")
    Image.new("1", (2, 1), 1).save(tmp_path / "bilevel.png")
    Image.new("CMYK", (2, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    read = {name: _channels(open_rgb(tmp_path / name))[0].tolist() for name in
            ("palette.png", "rgba.png", "la.png", "bilevel.png")}  # fmt: skip
    assert read["palette.png"] == [[10, 20, 30], [200, 150, 100]]
    assert read["rgba.png"] == [[200, 100, 50]] * 2  # alpha dropped, not composited (PIL's and the processor's rule)
    assert read["la.png"] == [[100, 100, 100]] * 2
    assert read["bilevel.png"] == [[255, 255, 255]] * 2
    with Image.open(tmp_path / "cmyk.jpg") as cmyk:
        assert cmyk.mode == "CMYK"
        expected = np.asarray(cmyk.convert("RGB"))
    rgb = _channels(open_rgb(tmp_path / "cmyk.jpg"))
    assert np.array_equal(rgb, expected) and (rgb[0, 0] >= [250, 0, 0]).all() and (rgb[0, 0] <= [255, 5, 5]).all()
    # Premultiplied La, which PIL cannot take straight to RGB, goes through LA.
    assert _channels(to_rgb(Image.new("La", (1, 1), (100, 255)), "la"))[0, 0].tolist() == [100, 100, 100]
    rgb_file = tmp_path / "rgb.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(rgb_file)
    assert _channels(open_rgb(rgb_file))[0, 0].tolist() == [1, 2, 3]


def test_unreadable_modes_are_refused_in_one_line_naming_file_and_mode(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "depth.tif")
    Image.fromarray(np.array([[0, 7, 300]], dtype=np.int32)).save(tmp_path / "labels.tif")
    with pytest.raises(UsageError) as err:
        open_rgb(tmp_path / "depth.tif")
    assert str(err.value) == (
        f"{tmp_path / 'depth.tif'}: image mode F (32-bit float) has no single 8-bit reading; "
        "save it as an 8- or 16-bit image"
    )
    with pytest.raises(UsageError, match=r"labels\.tif: image mode I with 32 bits per sample \(TIFF\)") as err:
        open_rgb(tmp_path / "labels.tif")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match=r"^grid: image mode I holds values -5\.\.70000, outside the 16-bit range"):
        to_rgb(Image.fromarray(np.array([[-5, 0, 70000]], dtype=np.int32)), "grid")


@pytest.mark.parametrize(("mode", "dtype"), [("I;16", "<u2"), ("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16N", "=u2")])
def test_every_16_bit_mode(mode, dtype):
    image = Image.frombytes(mode, (6, 1), GREY16.astype(dtype).tobytes())
    assert _channels(to_rgb(image, "in memory"))[0, :, 0].tolist() == GREY16_AS_8


def _to_16_bit(path: Path) -> np.ndarray:
    """Rewrite the photo at `path` (keeping its name: PIL reads the content) as a 16-bit grey PNG; its 8-bit RGB
    reading by value."""
    grey16 = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 241  # 0..61,455
    Image.fromarray(grey16).save(path, format="PNG")
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.95  # what PIL's own conversion gave before
    return np.repeat(((grey16.astype(np.int64) + 128) // 257).astype(np.uint8)[..., None], 3, axis=2)


def test_prepare_and_training_read_a_16_bit_png_by_value(copy_sample, micro_tokenizer, tmp_path):
    from rewards._bind import _log_rollout_columns
    from samtok_rl.configs import SamtokScriptArguments
    from samtok_rl.loading import load_dataset

    coffee = copy_sample / "images" / "coffee.jpg"
    expected = _to_16_bit(coffee)
    refs, instances = _refs(copy_sample)
    source = read_grefcoco(refs, instances, copy_sample / "images")
    source = source.select([i for i, p in enumerate(source["image"]) if p == str(coffee)])  # its 2 rows
    ds = prepare(source, "gres", tmp_path / "out", lambda: micro_tokenizer, progress=False)
    white = np.full_like(expected, 255)
    for row in ds:
        masks = np.stack([decode_rle(m) for m in row["gt_masks"]])
        assert row["gt_codes"] == micro_tokenizer.encode(expected, masks).tolist()
        assert row["gt_codes"] != micro_tokenizer.encode(white, masks).tolist()
    # Training: the policy's processor and the rewards get the same 8-bit pixels, and the rollout log the path.
    rows = load_dataset(SamtokScriptArguments(dataset=str(tmp_path / "out")))
    image = rows[0]["image"]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    logged = {}
    _log_rollout_columns(logged.__setitem__, ["text"], {"image": [image]})
    assert logged["samtok_image"] == [str(coffee)]
    assert rows.select_columns(["prompt"])[0].keys() == {"prompt"}  # a column selection without images still reads
    # The mask tokenizer's own image helper reads PIL images the same way.
    masks = np.stack([decode_rle(m) for m in ds[0]["gt_masks"]])
    with Image.open(coffee) as grey16:
        assert micro_tokenizer.encode(grey16, masks).tolist() == ds[0]["gt_codes"]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((300, 451), np.float32), "image mode F (32-bit float) has no single 8-bit reading"),
        (np.zeros((300, 451), np.int32), "image mode I with 32 bits per sample (TIFF) has no single 8-bit reading"),
    ],
)
def test_prepare_refuses_an_unreadable_mode_before_any_work(copy_sample, tmp_path, capsys, array, message):
    from samtok_rl import cli

    chelsea = copy_sample / "images" / "chelsea.jpg"
    Image.fromarray(array).save(chelsea, format="TIFF")
    refs, instances = _refs(copy_sample)
    named = re.escape(f"{chelsea}: {message}")
    with pytest.raises(DataError, match=rf"grefs\(unc\)\.json: ref #\d+ \(ref_id=\d+\): {named}"):
        read_grefcoco(refs, instances, copy_sample / "images")
    with pytest.warns(UserWarning, match="skipped 3 invalid row"):
        assert str(chelsea) not in read_grefcoco(refs, instances, copy_sample / "images", skip_invalid=True)["image"]
    # The command: exit status 2, one line, nothing written (the images are checked while the source is read).
    argv = ["prepare", "--task", "gres", "--refs", str(refs), "--instances", str(instances), "--images",
            str(copy_sample / "images"), "--mask_tokenizer", "micro", "--device", "cpu", "--no_progress",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{chelsea}: {message}" in err
    assert not (tmp_path / "out" / "data").exists()
