"""The celebamask-mini profile, as its register_competitions hook registers it."""

from conftest import builtin_host
from PIL import Image

import cpx_plugins.competitions as competitions
import cpx_plugins.formats as formats
import cpx_plugins.metrics as metrics

SAMPLE = "sample-submission/masks"


def _competition():
    host = builtin_host(competitions, "competitions")
    host.register(metrics, name="metrics")  # the profile names a metric and a format: bind checks them
    host.register(formats, name="formats")
    return host.competition("celebamask-mini")


def test_profile_holds_the_published_rules():
    comp = _competition()
    assert comp.num_classes == 19 and comp.classes[4:6] == ("l_eye", "r_eye")
    assert comp.flip_pairs == ((4, 5), (6, 7), (8, 9))
    assert comp.image_size == 512 and comp.max_params == 1_821_085
    assert comp.check_params(1_821_084) is None and "fewer than 1,821,085" in comp.check_params(1_821_085)
    assert comp.rules.submissions_per_phase == 10
    assert not comp.rules.ensembles_allowed and not comp.rules.pretrained_allowed
    assert comp.metric.name == "fscore" and comp.metric.scale == 1
    assert comp.submission.name == "masks-png" and comp.submission.options == {"modes": ["P", "L"]}
    assert comp.submission.solution.weights_key == "state_dict" and comp.submission.solution.runner == "run.py"
    assert comp.layout.image_suffixes == (".jpg",) and comp.layout.mask_name("a.jpg") == "a.png"


def test_flip_permutation_swaps_left_and_right():
    perm = _competition().flip_permutation()
    assert perm[4] == 5 and perm[5] == 4 and perm[8] == 9 and perm[0] == 0 and perm[18] == 18


def test_palette_matches_the_organisers_masks(shared_data):
    sample = next((shared_data / SAMPLE).glob("*.png"))
    theirs = Image.open(sample).getpalette()[: 19 * 3]
    assert _competition().palette_bytes()[: 19 * 3] == theirs
