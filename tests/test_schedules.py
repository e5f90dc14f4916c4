import math

import pytest
import torch

from simpletuner_pl.config import TrainConfig
from simpletuner_pl.schedules import FAST_SCHEDULE_SIGMAS, auto_shift, sample_sigmas, shift_sigmas

FLUX_SCHEDULER = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def train_cfg(**kw):
    return TrainConfig(**kw)  # the real dataclass: its defaults are logit-normal σ, scale 1, no shift


def test_logit_normal_statistics():
    torch.manual_seed(0)
    sigmas = sample_sigmas(200_000, train_cfg(), 1024, FLUX_SCHEDULER)
    logits = torch.logit(sigmas.double())
    assert abs(logits.mean().item()) < 0.01
    assert logits.std().item() == pytest.approx(1.0, abs=0.01)
    assert sigmas.min() > 0 and sigmas.max() < 1


def test_sigmoid_scale_widens_logits():
    torch.manual_seed(0)
    sigmas = sample_sigmas(100_000, train_cfg(flow_sigmoid_scale=2.0), 1024, FLUX_SCHEDULER)
    assert torch.logit(sigmas.double()).std().item() == pytest.approx(2.0, abs=0.03)


def test_shift_formula_and_monotonicity():
    sigmas = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    shifted = shift_sigmas(sigmas, 3.0)
    expected = torch.tensor([0.0, 0.75 / 1.5, 1.5 / 2.0, 2.25 / 2.5, 1.0])
    torch.testing.assert_close(shifted, expected)
    torch.testing.assert_close(shift_sigmas(sigmas, 1.0), sigmas)


def test_static_shift_applied_to_samples():
    torch.manual_seed(1)
    plain = sample_sigmas(1000, train_cfg(), 1024, FLUX_SCHEDULER)
    torch.manual_seed(1)
    shifted = sample_sigmas(1000, train_cfg(flow_schedule_shift=3.0), 1024, FLUX_SCHEDULER)
    torch.testing.assert_close(shifted, shift_sigmas(plain, 3.0))


@pytest.mark.parametrize("seq_len, mu", [(256, 0.5), (4096, 1.15), (1024, 0.5 + 0.65 * 768 / 3840)])
def test_auto_shift_mu_follows_scheduler_config(seq_len, mu):
    assert auto_shift(seq_len, FLUX_SCHEDULER) == pytest.approx(math.exp(mu))


def test_auto_shift_depends_on_resolution():
    torch.manual_seed(2)
    small = sample_sigmas(20_000, train_cfg(flow_schedule_auto_shift=True), 256, FLUX_SCHEDULER).mean()
    torch.manual_seed(2)
    large = sample_sigmas(20_000, train_cfg(flow_schedule_auto_shift=True), 4096, FLUX_SCHEDULER).mean()
    assert large > small + 0.05  # more tokens -> noisier training σ


def test_fast_schedule_distribution():
    torch.manual_seed(0)
    sigmas = sample_sigmas(50_000, train_cfg(flow_sigma_sampling="fast", flow_schedule_shift=3.0), 1024, FLUX_SCHEDULER)
    assert set(sigmas.unique().tolist()) == set(FAST_SCHEDULE_SIGMAS)  # the fast schedule is never shifted
    assert (sigmas == 1.0).float().mean().item() == pytest.approx(0.7, abs=0.01)


def test_uniform_and_beta_ranges():
    torch.manual_seed(0)
    uniform = sample_sigmas(50_000, train_cfg(flow_sigma_sampling="uniform"), 1024, FLUX_SCHEDULER)
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    beta = sample_sigmas(50_000, train_cfg(flow_sigma_sampling="beta", flow_beta_alpha=2.0, flow_beta_beta=6.0),
                         1024, FLUX_SCHEDULER)
    assert beta.mean().item() == pytest.approx(0.25, abs=0.01)
