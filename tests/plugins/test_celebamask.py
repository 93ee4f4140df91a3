"""The celebamask-mini profile, as its register_competitions hook registers it."""

from conftest import builtin_host
from PIL import Image

import cpx_plugins.celebamask as celebamask

SAMPLE = "sample-submission/masks"


def _competition():
    return builtin_host(celebamask, "celebamask").competition("celebamask-mini")


def test_profile_holds_the_published_rules():
    comp = _competition()
    assert comp.num_classes == 19 and comp.classes[4:6] == ("l_eye", "r_eye")
    assert comp.flip_pairs == ((4, 5), (6, 7), (8, 9))
    assert comp.image_size == 512 and comp.max_params == 1_821_085
    assert comp.check_params(1_821_084) is None and "fewer than 1,821,085" in comp.check_params(1_821_085)
    assert comp.rules.submissions_per_phase == 10
    assert not comp.rules.ensembles_allowed and not comp.rules.pretrained_allowed
    assert comp.submission.weights_key == "state_dict" and comp.submission.masks_dir == "masks"


def test_flip_permutation_swaps_left_and_right():
    perm = _competition().flip_permutation()
    assert perm[4] == 5 and perm[5] == 4 and perm[8] == 9 and perm[0] == 0 and perm[18] == 18


def test_palette_matches_the_organisers_masks(shared_data):
    sample = next((shared_data / SAMPLE).glob("*.png"))
    theirs = Image.open(sample).getpalette()[: 19 * 3]
    assert _competition().palette_bytes()[: 19 * 3] == theirs
