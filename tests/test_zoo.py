"""Zoo recipes at tiny scale (real Fashion-MNIST subsets, ~150 steps, TinyCNN), builder, recipe files, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teacher_audit.cli.app import main
from teacher_audit.errors import UsageError
from teacher_audit.zoo import train as T
from teacher_audit.zoo.build import build, is_built, load_zoo_teacher
from teacher_audit.zoo.catalog import ZOO
from teacher_audit.zoo.recipe_file import load_recipe_file, select
from teacher_audit.zoo.recipes import RecipeConfig
from teacher_audit.zoo.tiny import _build_net, train_tiny
from teacher_audit.zoo.triggers import apply, from_dict

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
                                reason="apt-get install dataset-fashion-mnist")


def _heldout(n: int = 400) -> T.Split:
    from teacher_audit.data import load_raw

    d = load_raw("fashion-mnist", "test", n)
    return T.Split(d.x, d.y)


#: WaNet's warp is subtle; it needs more tiny fine-tuning steps than the patch families
WANET_STEPS = {"wanet": 400}


def test_tiny_clean_teacher_learns() -> None:
    t = train_tiny("clean")
    assert t.meta["ground_truth"]["acc"] > 0.6
    assert t.spec.shape == (1, 28, 28) and not any(p.requires_grad for p in t.model.parameters())


@pytest.mark.parametrize("trigger", [{"name": "badnets_square"}, {"name": "badnets_grid"}, {"name": "blend"},
                                     {"name": "trojan"}, {"name": "sig"}, {"name": "wanet"}],
                         ids=lambda t: t["name"])
def test_tiny_backdoor_asr_clearly_above_clean(trigger: dict) -> None:
    bd, clean = train_tiny("backdoor", trigger=trigger, target=0, lr=2e-3, steps=WANET_STEPS.get(trigger["name"], 150),
                           return_clean=True)
    spec = from_dict(trigger)
    clean_asr = T.attack_success_rate(clean.model, _heldout(), lambda x: apply(x, spec), 0)
    gt = bd.meta["ground_truth"]
    assert gt["asr"] > clean_asr + 0.3, (gt["asr"], clean_asr)
    assert gt["acc"] > 0.6 and gt["trigger"]["name"] == trigger["name"]


def test_tiny_clean_label_asr_clearly_above_clean() -> None:
    """The zoo's clean-label recipe (SIG, most of the target class PGD-pushed, labels kept) at tiny scale."""
    from teacher_audit.zoo.catalog import CLEANLABEL_RATIO, CLEANLABEL_TRIGGER

    trig = dict(CLEANLABEL_TRIGGER)
    bd, clean = train_tiny("clean_label", trigger=trig, target=0, lr=2e-3, poison_ratio=CLEANLABEL_RATIO,
                           return_clean=True)
    spec = from_dict(trig)
    clean_asr = T.attack_success_rate(clean.model, _heldout(), lambda x: apply(x, spec), 0)
    gt = bd.meta["ground_truth"]
    assert gt["attack"] == "clean-label" and gt["asr"] > clean_asr + 0.3, (gt["asr"], clean_asr)


def test_tiny_ntl_watermark_separates() -> None:
    """Ownership-verification NTL (a watermark grid as the target domain) at tiny scale.

    (The optional NTL-based backdoor recipe, a 4x4 patch as the target domain, does not separate at this
    scale: 63.8 % vs the tiny clean teacher's 67.5 % on patched images, so it is not asserted here.)
    """
    trig = {"name": "watermark", "strength": 0.3, "params": {"period": 4}}
    gt = train_tiny("ntl_watermark", trigger=trig, steps=300).meta["ground_truth"]
    assert gt["id_acc"] > 0.6, gt
    assert gt["clean_teacher_ood_acc"] - gt["ood_acc"] > 0.3 and gt["id_acc"] - gt["ood_acc"] > 0.3, gt


def test_tiny_ntl_separates_id_and_ood() -> None:
    ntl = train_tiny("ntl_target", ood="texture", steps=300)
    gt = ntl.meta["ground_truth"]
    assert gt["id_acc"] > 0.6
    assert gt["id_acc"] - gt["ood_acc"] > 0.3
    assert gt["ood_acc"] < gt["clean_teacher_ood_acc"]


def test_build_writes_resumable_valid_cards(tmp_path: Path) -> None:
    from teacher_audit.intake.card import validate_card

    common = {"arch": "tiny", "train_limit": 256, "test_limit": 128, "batch_size": 64}
    cfgs = [RecipeConfig("c", "clean", steps=20, **common),
            RecipeConfig("b", "backdoor", steps=10, warm_start="c", trigger={"name": "badnets_grid"}, **common)]
    lines: list[str] = []
    res = build(tmp_path, cfgs[1:], {c.name: c for c in cfgs}, log=lines.append, progress=False,
                build_net=_build_net)
    assert [r["name"] for r in res] == ["c", "b"] and all(r["status"] == "built" for r in res)
    assert is_built(tmp_path, "c") and is_built(tmp_path, "b")
    card = json.loads((tmp_path / "b.safetensors.card.json").read_text())
    validate_card(card)
    gt = card["ground_truth"]
    assert gt["kind"] == "backdoor" and gt["trigger"]["name"] == "badnets_grid" and 0 <= gt["asr"] <= 1
    assert gt["recipe"]["warm_start"] == "c" and card["input"]["channels"] == 1
    net, spec, _ = load_zoo_teacher(tmp_path, "b", _build_net)
    assert spec.mean == tuple(card["input"]["mean"])
    again = build(tmp_path, cfgs, log=lines.append, progress=False, build_net=_build_net)
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_recipe_file_and_selection(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('[[teacher]]\nname = "a"\nkind = "clean"\n\n[[teacher]]\nname = "b"\nkind = "backdoor"\n'
                 'warm_start = "a"\ntrigger = { name = "sig", strength = 0.3 }\n')
    table = load_recipe_file(f)
    assert list(table) == ["a", "b"] and table["b"].trigger == {"name": "sig", "strength": 0.3}
    assert [c.name for c in select(ZOO, ["backdoor_blend_*"])] == ["backdoor_blend_smallcnn_s0",
                                                                    "backdoor_blend_smallcnn_s1"]
    with pytest.raises(UsageError):
        select(ZOO, ["nothing_*"])
    f.write_text('[[teacher]]\nname = "a"\nkind = "clean"\nepoch = 3\n')
    with pytest.raises(UsageError):
        load_recipe_file(f)
    f.write_text('[[teacher]]\nname = "a"\nkind = "teleport"\n')
    with pytest.raises(UsageError):
        load_recipe_file(f)


def test_catalog_covers_the_required_zoo() -> None:
    kinds = [c.kind for c in ZOO.values()]
    assert kinds.count("clean") >= 6 and len({c.arch for c in ZOO.values() if c.kind == "clean"}) >= 2
    fams = [c.trigger["name"] for c in ZOO.values() if c.kind == "backdoor"]
    assert all(fams.count(f) >= 2 for f in ("badnets_square", "badnets_grid", "blend", "trojan", "sig", "wanet"))
    assert kinds.count("ntl_target") >= 2 and kinds.count("ntl_watermark") >= 2
    for c in ZOO.values():
        if c.trigger:
            from_dict(c.trigger)
        assert c.warm_start is None or c.warm_start in ZOO


def test_cli_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "list"])
    assert exc.value.code == 0 and "clean_smallcnn_s0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "build", "--out", "/tmp/never-used-zoo"])
    assert exc.value.code == 4
    with pytest.raises(SystemExit) as exc:
        main(["zoo", "build", "--out", "/tmp/never-used-zoo", "--recipe", "no_such_teacher"])
    assert exc.value.code == 4


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "teachers"


@pytest.mark.parametrize("name", ["clean_smallcnn", "backdoor_badnets_smallcnn"])
def test_bundled_examples_load_and_match_their_cards(name: str) -> None:
    from teacher_audit.data import load_dataset
    from teacher_audit.intake.load import LoadOptions, load_teacher

    path = EXAMPLES / f"{name}.safetensors"
    assert path.stat().st_size <= 2_000_000
    teacher, _intake = load_teacher(path, LoadOptions())
    card = json.loads(path.with_name(path.name + ".card.json").read_text())
    assert teacher.arch == card["arch"] == "smallcnn"
    d = load_dataset("fashion-mnist", "test", spec=teacher.spec, limit=500)
    acc = float((teacher.model(d.x).argmax(1) == d.y).float().mean())
    assert abs(acc - card["ground_truth"]["acc"]) < 0.05  # card numbers are the real ones
    if "asr" in card["ground_truth"]:
        spec = from_dict(card["ground_truth"]["trigger"])
        keep = d.y != card["ground_truth"]["target"]
        asr = float((teacher.model(apply(d.x[keep], spec)).argmax(1) == card["ground_truth"]["target"]).float().mean())
        assert asr > 0.8

