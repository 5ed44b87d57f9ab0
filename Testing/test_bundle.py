"""Model bundle: save, load, and every way loading must fail clearly."""

import json
import shutil

import pytest

from SkullVAECompletionLib.errors import BundleError
from SkullVAECompletionLib.inference import regions
from SkullVAECompletionLib.model.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    load_bundle,
    read_manifest,
    resources_dir,
    save_bundle,
)


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(tiny_bundle, target)
    return target


def edit_manifest(folder, change):
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_load_round_trip(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.model_id == "tiny-test-model"
    assert bundle.class_names == ["complete", "cranial", "facial"]
    assert set(bundle.dev) == {"cranial", "facial"}
    assert bundle.grid.shape == (32, 40, 32)
    assert bundle.centroids["complete"].shape == (8,)
    assert bundle.paired_latents["delta"].shape[1] == 8
    assert not bundle.model.training
    manifest = read_manifest(tiny_bundle)
    assert manifest["format_version"] == FORMAT_VERSION and len(manifest["files"][WEIGHTS_NAME]) == 64


def test_format_1_bundle_still_loads(bundle_copy):
    """A bundle written by model 1.x (format 1: classes cranial/facial, no defect_classes, no class head) loads,
    detects by centroids and completes with its two defect classes."""
    from SkullVAECompletionLib.inference.completion import SkullCompleter
    from SkullVAECompletionLib.synthetic import defective_pair

    edit_manifest(bundle_copy, lambda m: m.update(format_version=1))
    bundle = load_bundle(bundle_copy)
    assert bundle.defect_classes == ["cranial", "facial"] and bundle.model.classifier is None
    completer = SkullCompleter(bundle, device="cpu")
    assert completer.defect_choices == ("auto", "cranial", "facial")
    _, defective, matrix = defective_pair("cranial")
    result = completer.run(defective, matrix, defect_type="cranial")
    assert result.defect_type == "cranial" and set(result.class_probabilities) == {"complete", "cranial", "facial"}


def test_region_bundle_manifest(region_bundle, tmp_path):
    """Format 2: region classes, their DEVs and a class head whose size matches the class names."""
    bundle = load_bundle(region_bundle)
    assert bundle.class_names == list(regions.CLASS_NAMES) and bundle.model.classifier is not None
    assert "facial" in bundle.defect_classes and set(bundle.defect_classes) == set(bundle.dev)
    copy = tmp_path / "bad"
    shutil.copytree(region_bundle, copy)
    edit_manifest(copy, lambda m: m.update(class_names=m["class_names"][:-1]))
    with pytest.raises(BundleError, match="class head has 8 outputs"):
        load_bundle(copy)
    edit_manifest(copy, lambda m: m.update(class_names=list(regions.CLASS_NAMES),
                                           defect_classes=[*m["defect_classes"], "occipital_typo"]))
    with pytest.raises(BundleError, match="'occipital_typo' has no DEV"):
        load_bundle(copy)


def test_corrupted_weights_are_refused(bundle_copy):
    weights = bundle_copy / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(bundle_copy)


def test_truncated_weights_with_matching_checksum_are_refused(bundle_copy):
    weights = bundle_copy / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    from SkullVAECompletionLib.model.bundle import sha256_of

    edit_manifest(bundle_copy, lambda m: m["files"].update({WEIGHTS_NAME: sha256_of(weights)}))
    with pytest.raises(BundleError, match="cannot read the weights"):
        load_bundle(bundle_copy)


def test_newer_format_version_asks_for_an_update(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="newer than this engine supports"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("dev"), "'dev' missing"),
        (lambda m: m.update(format="something-else"), "not a SkullVAE bundle manifest"),
        (lambda m: m["dev"].update(cranial=[0.0, 1.0]), r"dev\['cranial'\] must be a list of 8 numbers"),
        (lambda m: m["default_gamma"].pop("facial"), "no default gamma for defect type 'facial'"),
        (lambda m: m["completion"].update(method="magic"), "unknown completion method"),
        (lambda m: m["completion"].update(extraction_by_class={"facial": "magic"}),
         r"extraction_by_class\['facial'\] is 'magic'"),
        (lambda m: m["completion"].update(decode_threshold={"facial": 1.5}),
         r"decode_threshold\['facial'\] must be a probability"),
    ],
)
def test_invalid_manifests_say_what_is_wrong(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_weights_that_do_not_match_the_network_are_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["network"].update(channels=[8, 16, 64]))
    with pytest.raises(BundleError, match="weights do not match the network"):
        load_bundle(bundle_copy)


def test_missing_and_garbled_manifest(tmp_path, bundle_copy):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (bundle_copy / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(BundleError, match="cannot read the manifest"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bundle_copy)


def test_save_refuses_to_overwrite(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    target = tmp_path / "out"
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "files")}
    save_bundle(target, bundle.model, manifest)
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(target, bundle.model, manifest)
    save_bundle(target, bundle.model, manifest, overwrite=True)
    assert load_bundle(target).model_id == bundle.model_id


def test_resources_folder_is_found():
    assert (resources_dir() / "SampleData" / "CraniumSkull.nrrd").is_file()
