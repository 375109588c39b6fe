from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunetune.errors import PrunetuneError
from prunetune.pruning.masks import attach_mask, masked_layers, realise
from prunetune.pruning.schedules import all_sparsities, cubic_sparsity, gradual, iterative, oneshot
from prunetune.pruning.targets import select_targets
from prunetune.recipe import PruneSpec


def test_cubic_schedule_matches_zhu_gupta():
    # s_t = s_f + (s_i - s_f)(1 - t/n)^3
    assert cubic_sparsity(0, 4, 0.0, 0.9) == pytest.approx(0.0)
    assert cubic_sparsity(2, 4, 0.0, 0.9) == pytest.approx(0.9 - 0.9 * 0.125)
    assert cubic_sparsity(4, 4, 0.0, 0.9) == pytest.approx(0.9)
    phases = gradual(PruneSpec(sparsity=0.9, schedule={"kind": "gradual", "steps": 4, "start": 0.1, "end": 0.5}), 3)
    fracs, sp = zip(*phases[0].events)
    assert fracs == pytest.approx((0.2, 0.3, 0.4, 0.5))
    assert list(sp) == sorted(sp) and sp[-1] == 0.9 and phases[0].epochs == 3


def test_iterative_removes_same_fraction_of_what_remains():
    phases = iterative(PruneSpec(sparsity=0.9, schedule={"kind": "iterative", "steps": 2, "epochs_per_step": 1}), 5)
    assert [p.sparsity for p in phases] == pytest.approx([1 - 0.1 ** 0.5, 0.9])
    assert [p.epochs for p in phases] == [1, 5]
    assert all_sparsities(oneshot(PruneSpec(sparsity=0.3), 2)) == [0.3]


def test_gradual_needs_finetuning_epochs():
    with pytest.raises(PrunetuneError, match="finetune.epochs"):
        gradual(PruneSpec(sparsity=0.5, schedule={"kind": "gradual"}), 0)


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8)), nn.Linear(8, 2))


def test_targets_patterns_and_errors():
    net = _net()
    assert select_targets(net, ["*"], [], ["3"]) == ["0", "2.0"]
    assert select_targets(net, ["2.*"], [], []) == ["2.0"]
    with pytest.raises(PrunetuneError, match=r"prune.include: pattern 'conv\*' matches no prunable layer; available: 0, 2.0, 3"):
        select_targets(net, ["conv*"], [], [])
    with pytest.raises(PrunetuneError, match="select no layer"):
        select_targets(net, ["3"], [], ["3"])


def test_masked_weights_are_zero_and_realise_keeps_outputs():
    torch.manual_seed(0)
    net = _net()
    m = attach_mask(net[0])
    m.mask[:4] = False
    x = torch.randn(3, 4)
    out = net(x)
    assert torch.count_nonzero(net[0].weight[:4]) == 0
    plain = realise(net)
    assert torch.equal(plain(x), out) and not masked_layers(plain)
    # Realising a copy must leave the original masked and working (deepcopy shares classes).
    assert set(masked_layers(net)) == {"0"} and torch.equal(net(x), out)
    copy.deepcopy(net)(x)


def test_lamp_scores_follow_lee_et_al():
    from prunetune.pruning.importance import LAMP

    s = LAMP().scores(torch.tensor([1.0, -3.0, 2.0]), None)
    assert s.tolist() == pytest.approx([1 / 14, 1.0, 4 / 13])
    # The largest weight of every layer scores exactly 1, whatever the layer's scale.
    assert LAMP().scores(torch.randn(50) * 1e-3, None).max().item() == pytest.approx(1.0)
