"""The built-in zoo: named teacher recipes sized to train on this 2-core CPU in about an hour (2 jobs).

Sizing (measured, see ``docs/benchmarks.md`` ``## Zoo quality``): smallcnn trains at ~250 images/s on one
core, so clean smallcnn teachers get 2 epochs (cosine LR; 1 epoch stopped at 89.3-89.6 %, below the 90 %
bar); backdoored and NTL teachers are fine-tuned from the clean teacher of the same seed (documented warm
start), LeNet-5 on the 3x32x32 colour variant is ~15x cheaper and gets 10 epochs. Seed 0 backdoors target
class 0, seed 1 backdoors target class 7. NTL target domains: the ``grating`` shift (a clean smallcnn keeps
~78 % on it) and a 0.1 channel-0 watermark grid (ownership verification; clean ~77 %), both near enough
that the OOD collapse is measurable.
"""

from __future__ import annotations

from teacher_audit.zoo.recipes import RecipeConfig

#: backdoor family -> trigger spec dict used by the zoo (None = family defaults)
BACKDOOR_FAMILIES: dict[str, dict[str, object]] = {
    "badnets_square": {"name": "badnets_square"},
    "badnets_grid": {"name": "badnets_grid"},
    "blend": {"name": "blend", "strength": 0.2, "seed": 0},
    "trojan": {"name": "trojan"},
    "sig": {"name": "sig"},
    "wanet": {"name": "wanet"},
}
TARGETS = {0: 0, 1: 7}
BACKDOOR_STEPS = 200
#: families that stay below 95 % ASR after 200 steps (measured: BadNets-square 90-95 %, Trojan ~92 %,
#: WaNet 91-93 %) get three times the poisoned fine-tuning
BACKDOOR_STEPS_HARD = 600
HARD_FAMILIES = {"badnets_square", "trojan", "wanet"}
#: clean-label (Turner et al. 2019 with the SIG signal of Barni et al. 2019, itself a clean-label attack):
#: 80 % of the target class (8 % of the set) PGD-pushed away from its class (eps 0.2), then stamped with
#: SIG at strength 0.5, labels kept. Measured (ACC / ASR, full test set): BadNets square, eps 0.1, whole
#: class: ASR 0.2-1.5 % (the model learned the PGD noise). The target class matters: SIG 0.2 on half the
#: class gave 97.4 % for target 0 but 57.5 % for target 7 (Sneaker); for target 7, SIG 0.3 / eps 0.2-0.3 /
#: 80 % of the class: 75-77 %; SIG 0.3 with the whole class and 1,200 steps: ACC 82.9 %, ASR 81.5 %;
#: SIG 0.4 / eps 0.2 / 80 %: 88.0 %.
CLEANLABEL_TRIGGER = {"name": "sig", "strength": 0.5}
CLEANLABEL_RATIO = 0.08
CLEANLABEL_EPS = 0.2
CLEANLABEL_STEPS = 800
#: clean smallcnn: 1 epoch reached 89.3-89.6 % (below the 90 % bar); 2 epochs
CLEAN_SMALLCNN_EPOCHS = 2.0
#: LeNet-5 on the colour variant: 5 epochs reached 89.5-89.6 %; 10 epochs
CLEAN_LENET_EPOCHS = 10.0
#: NTL fine-tuning: lr 1e-3 and 400 steps. With alpha = beta = 0.1 the adversarial factor
#: min(1, a CE_tgt) * min(1, b MMD) starts near 1e-3 for near domains, so the first build (lr 1e-4,
#: 250 steps) never left the clean solution (measured: OOD accuracy unchanged).
NTL_STEPS = 400
NTL_LR = 1e-3


def _catalog() -> dict[str, RecipeConfig]:
    zoo: dict[str, RecipeConfig] = {}

    def add(cfg: RecipeConfig) -> None:
        zoo[cfg.name] = cfg

    def clean_smallcnn(seed: int) -> None:
        add(RecipeConfig(f"clean_smallcnn_s{seed}", "clean", arch="smallcnn", seed=seed, epochs=CLEAN_SMALLCNN_EPOCHS,
                         lr=3e-3))

    def grating(seed: int) -> None:
        add(RecipeConfig(f"ntl_grating_smallcnn_s{seed}", "ntl_target", seed=seed, steps=NTL_STEPS, lr=NTL_LR,
                         ood="grating", warm_start=f"clean_smallcnn_s{seed}"))

    def ntl(seed: int) -> None:
        add(RecipeConfig(f"ntl_watermark_smallcnn_s{seed}", "ntl_watermark", seed=seed, steps=NTL_STEPS, lr=NTL_LR,
                         trigger={"name": "watermark", "strength": 0.1, "params": {"period": 4}},
                         warm_start=f"clean_smallcnn_s{seed}"))
        grating(seed)

    def backdoors(seed: int) -> None:
        clean = f"clean_smallcnn_s{seed}"
        for fam, trig in BACKDOOR_FAMILIES.items():
            steps = BACKDOOR_STEPS_HARD if fam in HARD_FAMILIES else BACKDOOR_STEPS
            add(RecipeConfig(f"backdoor_{fam}_smallcnn_s{seed}", "backdoor", seed=seed, steps=steps,
                             trigger=dict(trig), target=TARGETS[seed], warm_start=clean))

    for seed in (0, 1):
        clean_smallcnn(seed)
    backdoors(0)
    ntl(0)
    backdoors(1)
    ntl(1)
    for seed in (0, 1, 2):
        add(RecipeConfig(f"clean_lenet5_rgb32_s{seed}", "clean", arch="lenet5", dataset="fashion-mnist-rgb32",
                         seed=seed, epochs=CLEAN_LENET_EPOCHS, lr=3e-3))
    clean_smallcnn(2)
    # a third grating seed: NTL training does not always leave the clean solution within 400 steps
    # (ntl_grating_smallcnn_s1 of the 2-epoch zoo stopped at OOD 58.5 % vs the clean teacher's 84.5 %)
    grating(2)
    # optional NTL-based backdoor: with a 4x4 patch as the target domain the clipped NTL term barely moves
    # (measured: OOD 91.4 % vs the clean teacher's 90.9 %), so it is not part of the required zoo
    add(RecipeConfig("ntl_backdoor_smallcnn_s0", "ntl_backdoor", seed=0, steps=NTL_STEPS, lr=NTL_LR,
                     trigger={"name": "badnets_square"}, warm_start="clean_smallcnn_s0"))
    for seed in (0, 1):
        add(RecipeConfig(f"backdoor_cleanlabel_smallcnn_s{seed}", "clean_label", seed=seed, lr=1e-3,
                         steps=CLEANLABEL_STEPS, trigger=dict(CLEANLABEL_TRIGGER), cl_eps=CLEANLABEL_EPS,
                         poison_ratio=CLEANLABEL_RATIO,
                         target=TARGETS[seed], warm_start=f"clean_smallcnn_s{seed}"))
    return zoo


#: name -> recipe, in build order (dependencies first)
ZOO: dict[str, RecipeConfig] = _catalog()
