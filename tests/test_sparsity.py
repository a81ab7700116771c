import torch
from torch import nn

from archdiscover import sparsity_report


def test_counts_active_units_per_layer_type():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ConvTranspose2d(8, 6, 3),
        nn.Flatten(),
        nn.Linear(10, 5),
    )
    with torch.no_grad():
        model[0].weight[[1, 4, 6]] = 0  # 3 dead output channels
        model[0].weight[0, 0, 0, 0] = 0  # a single zero: channel 0 still active
        model[2].weight[:, [0, 5]] = 0  # ConvTranspose out channels are dim 1
        model[4].weight[2:] = 0  # 3 dead neurons
        model[4].bias.zero_()
    rep = sparsity_report(model)
    rows = {r.name: r for r in rep.layers}
    assert set(rows) == {"0", "1", "2", "4"}
    assert (rows["0"].units, rows["0"].active_units) == (8, 5)
    assert rows["0"].weight_nonzero == 5 * 27 - 1
    assert rows["0"].nonzero == 5 * 27 - 1 + 8  # + conv bias
    assert (rows["2"].units, rows["2"].active_units) == (6, 4)
    assert (rows["4"].units, rows["4"].active_units) == (5, 2)
    assert rows["4"].nonzero == 20
    assert rows["1"].units is None and rows["1"].nonzero == 8  # BN weight ones, bias zeros
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert (rep.params, rep.nonzero) == (total, nonzero)
    assert rep.density == nonzero / total
    weights = [model[0].weight, model[2].weight, model[4].weight]
    assert rep.weight_density == sum(int((w != 0).sum()) for w in weights) / sum(
        w.numel() for w in weights
    )
    assert rep.active_units() == {"0": 5, "2": 4, "4": 2}
    text = str(rep)
    assert "Conv2d" in text and "5 / 8" in text and "total" in text
    d = rep.to_dict()
    assert d["nonzero"] == nonzero and len(d["layers"]) == 4
