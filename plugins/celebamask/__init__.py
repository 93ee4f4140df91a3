"""The CelebAMask face-parsing mini challenge, as a competition profile.

Everything specific to this challenge (classes, palette, left/right pairs, parameter cap,
submission layout, rules) lives here, not in the core.
"""

from cpx.data.competition import Competition, Layout, Rules, SubmissionFormat
from cpx.kernel.hookspecs import hookimpl

CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
    "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)

# The palette of the organisers' own masks (train masks and the sample submission).
PALETTE = (
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204),
    (0, 255, 255), (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0),
    (0, 0, 153), (0, 0, 204), (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51),
    (0, 204, 0),
)


def _synthesize(count, size, seed):
    # imported lazily: the generator is only needed when synthetic data is asked for
    from .synthetic import synthesize_faces

    return synthesize_faces(count, size, seed)


CELEBAMASK_MINI = Competition(
    name="celebamask-mini",
    title="CelebAMask face parsing mini challenge",
    classes=CLASSES,
    palette=PALETTE,
    flip_pairs=((4, 5), (6, 7), (8, 9)),
    # measured on the 900 training masks: l_eye right of r_eye in 808 of the 870 holding both,
    # l_brow right of r_brow in 796 of 856; the rest are the label errors `--labels` finds
    pair_side="right",
    midline_classes=(2, 1),  # nose, else the skin's centre
    image_size=512,
    max_params=1_821_085,
    metric="fscore",
    layout=Layout(train_images="train/images", train_masks="train/masks", test_images="test/images",
                  image_suffixes=(".jpg",), mask_suffix=".png"),
    submission=SubmissionFormat(masks_dir="masks", mask_modes=("P", "L"), solution_dir="solution",
                                weights_file="ckpt.pth", weights_key="state_dict", runner="run.py"),
    # The organisers' rules: no ensembles, no pretrained weights or outside data, and of a
    # participant's submissions only the final one counts (cpx warns when it is not the best).
    rules=Rules(ensembles_allowed=False, pretrained_allowed=False, external_data_allowed=False,
                submissions_per_phase=10, only_final_counts=True),
    synthesize=_synthesize,
    url="https://www.codabench.org",
)


@hookimpl
def register_competitions(register):
    register("celebamask-mini", CELEBAMASK_MINI,
             description="CelebAMask face parsing mini: 19 classes, 512x512, mean per-class F, < 1,821,085 params")
