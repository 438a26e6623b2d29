"""The video aggregation rule: a fake stretch is flagged, one noisy frame is not, peak_t names the moment."""

from __future__ import annotations

import numpy as np
import pytest

from bench.video import confident_mean
from tests.fixtures.videos import make_clip, redness
from worker.inference.video.aggregate import aggregate_frames
from worker.inference.video.decode import VideoPolicy, sample_frames

THRESHOLD = 0.5


def _times(scores: list[float], step: float = 2.0) -> list[tuple[float, float]]:
    return [(i * step, p) for i, p in enumerate(scores)]


def test_one_noisy_frame_does_not_flag_a_clip_but_the_plain_max_would() -> None:
    scores = [0.1] * 32
    scores[17] = 0.99
    result = aggregate_frames(_times(scores))
    assert result.fake_score == pytest.approx(0.1)
    assert result.fake_score < THRESHOLD <= max(scores)


def test_two_noisy_frames_apart_or_together_do_not_flag_a_clip() -> None:
    scores = [0.1] * 32
    scores[5] = scores[6] = 0.97
    assert aggregate_frames(_times(scores)).fake_score < THRESHOLD
    scores[20] = 0.97
    assert aggregate_frames(_times(scores)).fake_score < THRESHOLD


def test_a_fake_stretch_of_three_samples_is_flagged_and_peak_t_is_inside_it() -> None:
    scores = [0.1] * 32
    scores[20:23] = [0.8, 0.95, 0.85]
    result = aggregate_frames(_times(scores, step=1.875))
    assert result.fake_score == pytest.approx(0.8)
    assert result.fake_score >= THRESHOLD
    assert result.peak_t == pytest.approx(21 * 1.875)  # the highest frame of the winning window
    # the whole-clip rules miss it
    assert float(np.mean(scores)) < THRESHOLD and confident_mean(scores) < THRESHOLD


def test_order_does_not_matter_and_few_frames_use_them_all() -> None:
    pairs = _times([0.2, 0.9, 0.3, 0.8, 0.7, 0.1])
    assert aggregate_frames(pairs) == aggregate_frames(list(reversed(pairs)))
    assert aggregate_frames([(0.0, 0.4)]).fake_score == pytest.approx(0.4)
    assert aggregate_frames(_times([0.2, 0.9])).fake_score == pytest.approx(0.55)  # median of two
    result = aggregate_frames(_times([0.2, 0.9, 0.6]))
    assert (result.fake_score, result.peak_t) == (pytest.approx(0.6), 2.0)


@pytest.mark.parametrize("bad", [[], [(0.0, float("nan"))], [(0.0, 1.5)], [(0.0, -0.1)]])
def test_bad_input_is_refused(bad: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError):
        aggregate_frames(bad)


def test_on_generated_videos_a_fake_stretch_is_flagged_and_a_noisy_frame_is_not() -> None:
    """Frames scored by their red wash (p = mean red / 255): real ~0.3, fake ~0.9. 32 samples of 6.4 s."""
    policy = VideoPolicy(frames=32)

    def judge(**kwargs: object) -> tuple[float, float]:
        data = make_clip(width=32, height=32, fps=10, seconds=6.4, gop=20, **kwargs)  # type: ignore[arg-type]
        frames = [(f.t, redness(np.asarray(f.image))) for f in sample_frames(data, policy)]
        assert len(frames) == 32
        result = aggregate_frames(frames)
        return result.fake_score, result.peak_t

    clean, _ = judge()
    assert clean < THRESHOLD
    noisy, _ = judge(noisy_frames=(37,))  # one frame, sampled (every other frame is)
    assert noisy < THRESHOLD
    fake, peak = judge(fake_spans=((3.0, 4.0),))  # 1 s of 6.4: 5 samples
    assert fake >= THRESHOLD and 3.0 <= peak < 4.0
