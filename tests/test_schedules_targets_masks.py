from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunetune.errors import PrunetuneError
from prunetune.pruning.masks import attach_mask, masked_layers, realise
from prunetune.pruning.regrow import fraction, swap
from prunetune.pruning.schedules import all_sparsities, cubic_sparsity, dynamic, gradual, iterative, oneshot
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


def test_dynamic_schedule_swaps_at_the_same_sparsity():
    phases = dynamic(PruneSpec(method="unstructured", sparsity=0.9, schedule={"kind": "dynamic", "steps": 4, "end": 0.8}), 2)
    assert len(phases) == 1 and phases[0].sparsity == 0.9 and phases[0].epochs == 2
    fracs, sp = zip(*phases[0].events)
    assert fracs == pytest.approx((0.2, 0.4, 0.6, 0.8)) and set(sp) == {0.9}
    with pytest.raises(PrunetuneError, match="finetune.epochs: the dynamic schedule drops and grows weights during fine-tuning"):
        dynamic(PruneSpec(method="unstructured", sparsity=0.5, schedule={"kind": "dynamic"}), 0)


def test_the_share_swapped_decays_on_a_cosine():
    assert [round(fraction(i, 4), 4) for i in range(4)] == [0.3, 0.2561, 0.15, 0.0439]


def test_straight_through_mask_passes_the_gradient_to_pruned_weights():
    torch.manual_seed(0)
    fixed, st = nn.Linear(6, 3), nn.Linear(6, 3)
    st.load_state_dict(fixed.state_dict())
    x = torch.randn(4, 6)
    for lin, through in ((fixed, False), (st, True)):
        m = attach_mask(lin)
        m.mask[:, :3] = False
        m.straight_through = through
        lin(x).pow(2).sum().backward()
    assert torch.equal(st(x), fixed(x)) and torch.count_nonzero(st.weight[:, :3]) == 0  # the same forward, exactly
    g_fixed, g_st = fixed.parametrizations.weight.original.grad, st.parametrizations.weight.original.grad
    assert torch.count_nonzero(g_fixed[:, :3]) == 0 and torch.count_nonzero(g_st[:, :3]) == 9
    assert torch.equal(g_st[:, 3:], g_fixed[:, 3:])  # kept weights: the usual gradient


def test_drop_and_grow_swaps_the_smallest_kept_for_the_largest_gradients():
    from prunetune.pruning.importance import L1Magnitude
    from prunetune.registry import PRUNERS

    lin = nn.Linear(5, 2, bias=False)  # one tensor of 10 weights, 4 kept
    spec = PruneSpec(method="unstructured", importance="l1", sparsity=0.6, scope="layer", schedule={"kind": "dynamic"})
    net = nn.Sequential(lin)
    pruner = PRUNERS.get("unstructured")(spec, L1Magnitude(), ["0"])
    pruner.setup(net, None, [0.6, 0.6])
    orig = lin.parametrizations.weight.original
    with torch.no_grad():
        orig.copy_(torch.tensor([[0.9, -0.8, 0.1, 0.05, 0.02], [0.7, 0.03, 0.01, 0.04, 0.06]]))
    pruner.prune_to(net, 0.6)  # keeps 0.9, -0.8, 0.7 and 0.1
    mask = lin.parametrizations.weight[0].mask
    assert mask.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    grad = torch.tensor([[0.0, 0.0, 0.0, 0.2, 0.0], [0.0, 0.0, 3.0, 0.0, 1.0]])  # of the masked weight
    (o, m), = pruner.weights_and_masks(net)
    assert o is orig and m.mask is mask
    assert swap([(o, m.mask, grad)], 0.5) == 2  # the two smallest kept (0.1, 0.7) out, the two largest gradients in
    assert mask.tolist() == [[True, True, False, False, False], [False, False, True, False, True]]
    assert orig[1, 2] == 0 and orig[1, 4] == 0  # grown weights start at zero
    assert orig[0, 0] == 0.9 and int(mask.sum()) == 4  # the count is kept


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


def test_a_dynamic_run_keeps_its_sparsity_reports_the_weights_grown_and_reloads(tmp_path):
    from prunetune.artifacts import load_model
    from prunetune.pipeline import run
    from prunetune.recipe.loading import load_recipe

    recipe = load_recipe(None, ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=300", "dense.epochs=2",
                                "dense.lr=0.01", "dense.cache=false", "finetune.epochs=3", "finetune.batch_size=16",
                                "evaluate.latency=false", "evaluate.memory=false", "prune.method=unstructured",
                                "prune.sparsity=0.8", "prune.schedule.kind=dynamic", "prune.schedule.steps=10"])
    rep = run(recipe, tmp_path / "r", log=lambda m: None)
    note = next(n for n in rep["notes"] if n.startswith("dynamic:"))
    grown = int(note.split("; ")[1].split(" pruned")[0].replace(",", ""))
    assert note.startswith("dynamic: 10 drop-and-grow steps during fine-tuning; ") and grown > 0, note
    assert rep["finetune"]["best_epoch"] >= 2  # epoch 1 ended before the last drop-and-grow step: it cannot be kept
    plan = {r["layer"]: r for r in rep["plan"] if r["target"]}
    model, _ = load_model(tmp_path / "r" / "model", keep_masks=True)
    masks = masked_layers(model)
    assert set(masks) == set(plan)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * total)  # global LAMP: exactly the target
    for name, m in masks.items():  # the shipped weights are zero exactly where the masks prune
        w = dict(model.named_modules())[name].parametrizations.weight.original
        assert torch.count_nonzero(w[~m]) == 0
