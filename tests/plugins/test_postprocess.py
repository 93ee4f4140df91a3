"""Post-processor plugins (register_postprocessors): the built-ins, their numpy twins that
solution/run.py uses, --post parsing, and a third-party post-processor end to end."""

import numpy as np
import pytest
from scipy import ndimage

import cpx_plugins.postprocess
from cpx.eval.postprocess import create_post, parse_post, post_label
from cpx.kernel.errors import ConfigError, UnknownComponent
from cpx.kernel.hookspecs import hookimpl
from cpx_plugins import postprocess_numpy as pn


@pytest.mark.parametrize("seed", range(4))
def test_label4_finds_scipys_components(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        binary = rng.random((h, w)) < rng.random()
        ours, n = pn.label4(binary)
        theirs, m = ndimage.label(binary)
        assert n == m and np.array_equal(ours, theirs)


def test_small_components_are_refilled_from_their_surroundings():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5, 5] = 2  # a speck of 2 inside 1
    mask[15:18, 15:18] = 2  # the largest component of 2: stays
    mask[0, 19] = 1  # a speck of 1 in the background
    out = pn.remove_small_components(mask, min_share=0.01)  # 4 px
    assert out[5, 5] == 1 and out[0, 19] == 0 and (out[15:18, 15:18] == 2).all()
    assert (out != mask).sum() == 2 and out.dtype == np.uint8
    # a class made of specks only keeps its largest one; restricted classes leave others alone
    assert pn.remove_small_components(mask, min_share=0.5)[16, 16] == 2
    assert pn.remove_small_components(mask, min_share=0.01, classes=[1])[5, 5] == 2


def test_holes_are_filled_unless_large_or_open_to_the_border():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:7, 5:7] = 3  # a 4 px hole in 1
    mask[0:3, 15:20] = 1
    mask[0, 17] = 4  # touches the border: not a hole
    out = pn.fill_holes(mask, max_share=0.02)
    assert (out[5:7, 5:7] == 1).all() and out[0, 17] == 4
    assert (pn.fill_holes(mask, max_share=0.005)[5:7, 5:7] == 3).all()  # larger than 2 px: kept


def test_the_plugins_give_the_numpy_twins_masks(cpx_host):
    comp = cpx_host.competition("celebamask-mini")
    rng = np.random.default_rng(0)
    masks = [m for _, m in comp.synthesize(6, 64, 0)]
    masks += [rng.integers(0, 5, (33, 47)).astype(np.uint8) for _ in range(4)]
    for name, function in (("small-components", pn.remove_small_components), ("fill-holes", pn.fill_holes)):
        step = cpx_host.postprocessors.get(name).create({}, comp)
        path, fn_name, kwargs = step.cpx_source
        assert path == pn.__file__ and fn_name == function.__name__
        for m in masks:
            for share in (1e-3, 2e-2):
                key = "min_share" if name == "small-components" else "max_share"
                kw = {**kwargs, key: share}
                assert np.array_equal(function(m, label=ndimage.label, **kw), function(m, **kw))
        assert np.array_equal(step(masks[0]), function(masks[0], **kwargs))


def test_post_specs_parse_and_build(cpx_host):
    assert parse_post(None) == parse_post("none") == []
    assert parse_post("small-components:min_share=0.001:classes=[1, 2],fill-holes") == [
        ("small-components", {"min_share": 0.001, "classes": [1, 2]}), ("fill-holes", {})]
    comp = cpx_host.competition("celebamask-mini")
    steps = create_post("small-components:min_share=0.001,fill-holes", cpx_host, comp)
    assert [s.name for s in steps] == ["small-components", "fill-holes"] and steps[0].options["min_share"] == 0.001
    assert post_label(steps).startswith("small-components:min_share=0.001,fill-holes")
    with pytest.raises(UnknownComponent, match="fill-holes"):
        create_post("fill-hole", cpx_host, comp)
    with pytest.raises(ConfigError, match="min_share"):
        create_post("small-components:min_share=2", cpx_host, comp)
    with pytest.raises(ConfigError, match="NAME:key=value"):
        parse_post("small-components:oops")


class _Erase:
    """A third-party post-processor without a standalone source: relabels class 1 as 0."""

    @hookimpl
    def register_postprocessors(self, register):
        register("erase-skin", lambda options, competition: (lambda mask: np.where(mask == 1, 0, mask)
                                                             .astype(mask.dtype)))


def test_a_plugin_post_processor_runs_in_validate_and_is_refused_by_package(cpx_host, unet_run, cpx_workspace):
    from cpx.eval.validate import validate_run
    from cpx.kernel.errors import SubmissionError
    from cpx.submit.package import PackageRequest, package

    cpx_host.register(_Erase(), name="erase")
    assert "erase-skin" in cpx_host.postprocessors and "small-components" in cpx_host.postprocessors
    plain = validate_run(unet_run, cpx_workspace, cpx_host, record=False)
    erased = validate_run(unet_run, cpx_workspace, cpx_host, record=False, post="erase-skin")
    assert erased.post == "erase-skin" and erased.stages["raw"] == pytest.approx(plain.scores.score)
    assert erased.scores.per_class[1] == 0.0  # skin is never predicted any more
    with pytest.raises(SubmissionError, match="no standalone source"):
        package(PackageRequest(run=unet_run, name="erased", post=("erase-skin",)), cpx_workspace, cpx_host)


def test_builtin_module_registers_both(cpx_host):
    names = set(cpx_host.postprocessors.names())
    assert {"small-components", "fill-holes"} <= names
    assert cpx_plugins.postprocess.register_postprocessors
