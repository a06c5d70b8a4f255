"""The scenes drawn by other code (`studio.shapes.independent`): what the detector that judges the models reads in
them is their scene, yet their pixels are not the world's."""

import numpy as np

from studio.shapes import independent
from studio.shapes.detect import detect
from studio.shapes.world import COLOURS, sample_scene

SCENES = [sample_scene(5_000_000 + i) for i in range(100)]


def test_the_detector_reads_each_shape_as_its_world_scene_says():
    read = total = 0
    for i, scene in enumerate(SCENES):
        found = {(d.shape, d.colour, d.position) for d in detect(independent.render(scene.shapes, scene.background,
                                                                                    seed=i).image)}
        read += sum((s.shape, s.colour, s.position) in found for s in scene.shapes)
        total += len(scene.shapes)
    assert read / total >= 0.97, (read, total)  # 99.4% on 200 scenes


def test_the_pixels_are_not_the_worlds():
    shades, off_centre, changed = set(), [], []
    for i, scene in enumerate(SCENES[:40]):
        drawn = independent.render(scene.shapes, scene.background, seed=i)
        pixels = np.asarray(drawn.image).reshape(-1, 3)
        shades |= {tuple(p) for p in pixels}
        for mask, world_mask in zip(drawn.masks, scene.masks):
            ys, xs = np.nonzero(mask)
            wys, wxs = np.nonzero(world_mask)
            off_centre.append(np.hypot(ys.mean() - wys.mean(), xs.mean() - wxs.mean()))
            changed.append((mask != world_mask).sum() / world_mask.sum())
    assert not shades & {tuple(c) for c in COLOURS.values()}, "shades of the colours, never the palette's own"
    assert np.median(off_centre) > 0.7 and np.median(changed) > 0.15, (np.median(off_centre), np.median(changed))


def test_a_seed_draws_the_same_picture():
    scene = SCENES[0]
    first, again = (np.asarray(independent.render(scene.shapes, scene.background, seed=3).image) for _ in range(2))
    other = np.asarray(independent.render(scene.shapes, scene.background, seed=4).image)
    assert (first == again).all() and (first != other).any()
