"""Ground-truth groups: each transform is exact, the assignment is balanced, and a
federation with groups is the federation without them, transformed per client."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fldistill.config import parse_config
from fldistill.data.federation import Federation, build_federation
from fldistill.data.groups import GroupSpec, assign_groups, label_perms, parse_groups, transform
from fldistill.errors import ConfigError
from fldistill.runner import validate

# --------------------------------------------------------------------------- transforms


def test_rotate_known_image() -> None:
    img = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    y = torch.tensor([7])
    want = {
        0: [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
        1: [[2, 5, 8], [1, 4, 7], [0, 3, 6]],  # 90 degrees counter-clockwise
        2: [[8, 7, 6], [5, 4, 3], [2, 1, 0]],
        3: [[6, 3, 0], [7, 4, 1], [8, 5, 2]],
    }
    for g, w in want.items():
        x2, y2 = transform(img, y, "rotate", g, 10, seed=0)
        assert torch.equal(x2[0, 0], torch.tensor(w, dtype=torch.float32)), g
        assert torch.equal(y2, y)
    x = torch.randn(5, 3, 4, 4)
    once, _ = transform(x, y, "rotate", 1, 10, 0)
    assert torch.equal(transform(once, y, "rotate", 3, 10, 0)[0], x), "90 then 270 degrees is the identity"
    assert torch.equal(once[:, 1], torch.rot90(x[:, 1], 1, dims=(-2, -1))), "channels rotate alike"


def test_labelswap_permutations() -> None:
    perms = label_perms(10, 10, seed=3)
    assert perms.shape == (10, 10) and perms.dtype == np.int64
    assert np.array_equal(perms[0], np.arange(10)), "group 0 is the identity"
    assert all(np.array_equal(np.sort(p), np.arange(10)) for p in perms), "each row is a permutation"
    assert len({tuple(p) for p in perms}) == 10, "groups have distinct permutations"
    assert np.array_equal(label_perms(4, 10, seed=3), perms[:4]), "group g's permutation does not depend on G"
    assert not np.array_equal(label_perms(3, 10, seed=4), perms[:3]), "seeded"
    # Exhaustive: 3 classes have 3! = 6 permutations, and 6 groups get all of them.
    assert sorted(map(tuple, label_perms(6, 3, seed=0).tolist())) == sorted(itertools.permutations(range(3)))
    with pytest.raises(ConfigError, match="6 permutations"):
        label_perms(7, 3, seed=0)
    x, y = torch.randn(20, 5), torch.arange(20) % 10
    for g in range(4):
        x2, y2 = transform(x, y, "labelswap", g, 10, seed=3)
        assert x2 is x, "labelswap leaves the inputs alone"
        assert torch.equal(y2, torch.as_tensor(perms[g])[y])


@pytest.mark.parametrize("shape", [(4, 7), (4, 2, 7), (3, 40)])
def test_signal_transforms_exact(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape)
    y = torch.arange(shape[0])
    length = shape[-1]
    ident, rev, flip, shift = (transform(x, y, "signal", g, 10, 0)[0] for g in range(4))
    assert torch.equal(ident, x)
    idx = torch.arange(length)
    assert torch.equal(rev, x[..., length - 1 - idx]), "time reversal"
    assert torch.equal(flip, -x), "sign flip"
    assert torch.equal(shift, x[..., (idx - length // 2) % length]), "circular shift by L // 2"
    assert all(torch.equal(transform(x, y, "signal", g, 10, 0)[1], y) for g in range(4))


def test_transform_refuses_wrong_shapes() -> None:
    with pytest.raises(ConfigError, match="square images"):
        transform(torch.randn(2, 40), torch.zeros(2, dtype=torch.long), "rotate", 1, 10, 0)
    with pytest.raises(ConfigError, match="1-D signals"):
        transform(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), "signal", 1, 10, 0)


# --------------------------------------------------------------------------- assignment and parsing


@pytest.mark.parametrize("n, g", [(10, 1), (10, 3), (7, 4), (100, 4), (5, 5)])
def test_assign_groups_balanced_and_seeded(n: int, g: int) -> None:
    a = assign_groups(n, g, seed=0)
    assert a.shape == (n,) and a.dtype == np.int64
    sizes = np.bincount(a, minlength=g)
    assert len(sizes) == g and sizes.max() - sizes.min() <= 1
    assert np.array_equal(a, assign_groups(n, g, seed=0))
    if g > 1 and n > g:
        assert not np.array_equal(a, assign_groups(n, g, seed=1)), "the assignment is a seeded shuffle"


def test_parse_groups_normalises() -> None:
    spec = parse_groups(" 4:LabelSwap ", n_classes=10, input_shape=(40,), n_clients=10)
    assert spec == GroupSpec(4, "labelswap") and str(spec) == "4:labelswap"
    assert str(parse_groups("04:rotate", input_shape=(3, 32, 32))) == "4:rotate"
    assert str(parse_groups("1:signal", input_shape=(2, 40))) == "1:signal"
    assert str(parse_groups("2:rotate")) == "2:rotate", "no shape known yet (folder datasets): checked after loading"


BAD_SPECS = [
    ("rotate", {}, "G:KIND"),
    ("x:rotate", {}, "integer"),
    ("0:rotate", {}, "at least 1 group"),
    ("-2:signal", {}, "at least 1 group"),
    ("4:blur", {}, "unknown kind 'blur'"),
    ("5:rotate", {}, "G <= 4"),
    ("5:signal", {}, "G <= 4"),
    ("7:labelswap", {"n_classes": 3}, "(3!)"),
    ("11:labelswap", {"n_clients": 10}, "only 10 clients"),
    ("2:rotate", {"input_shape": (40,)}, "square images"),
    ("2:rotate", {"input_shape": (3, 32, 28)}, "square images"),
    ("2:signal", {"input_shape": (1, 8, 8)}, "1-D signals"),
]


@pytest.mark.parametrize("text, facts, needle", BAD_SPECS)
def test_bad_group_specs(text: str, facts: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_groups(text, **facts)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg, msg


def test_validate_checks_groups_before_loading(make_cfg) -> None:
    validate(make_cfg(groups="4:rotate"))  # digits: 1x8x8, square
    for groups, needle in (("2:signal", "1-D signals"), ("11:labelswap", "only 10 clients"), ("3:spin", "unknown kind")):
        with pytest.raises(ConfigError, match=needle):
            validate(make_cfg(groups=groups))
    with pytest.raises(ConfigError, match="square images"):
        validate(make_cfg(dataset="mnist1d", groups="2:rotate"))


# --------------------------------------------------------------------------- federations


def _fed(dataset: str, groups: str | None, n: int = 20, **kw) -> Federation:
    size = {"dataset_size": 2000} if dataset == "mnist1d" else {}
    return build_federation(dataset, "classes:3", n, seed=5, groups=groups, **size, **kw)


@pytest.mark.parametrize("dataset, groups", [("digits", "4:rotate"), ("digits", "3:labelswap"), ("mnist1d", "4:signal"), ("mnist1d", "2:labelswap")])
def test_federation_with_groups_is_the_plain_one_transformed(dataset: str, groups: str) -> None:
    plain, fed = _fed(dataset, None), _fed(dataset, groups)
    n_groups, kind = int(groups.split(":")[0]), groups.split(":")[1]
    assert fed.groups == groups and plain.groups is None and plain.client_group is None and plain.group_test is None
    assert fed.client_group is not None and fed.group_test is not None
    assert fed.client_group.dtype == np.int64 and fed.client_group.shape == (20,)
    sizes = np.bincount(fed.client_group, minlength=n_groups)
    assert len(sizes) == n_groups and sizes.max() - sizes.min() <= 1
    assert np.array_equal(fed.client_group, assign_groups(20, n_groups, seed=5)), "the recorded assignment is the seeded one"
    # Same partition, split and normalisation as without groups.
    assert all(np.array_equal(a, b) for a, b in zip(fed.client_train + fed.client_test, plain.client_train + plain.client_test))
    assert np.array_equal(fed.mean, plain.mean) and np.array_equal(fed.std, plain.std)
    assert torch.equal(fed.x_test, plain.x_test) and torch.equal(fed.y_test, plain.y_test)
    for cid in range(20):
        g = int(fed.client_group[cid])
        for split in ("train", "test"):
            px, py = plain.client_data(cid, split)
            want_x, want_y = transform(px, py, kind, g, plain.n_classes, seed=5)
            gx, gy = fed.client_data(cid, split)
            assert torch.equal(gx, want_x) and torch.equal(gy, want_y), (cid, split)
    assert len(fed.group_test) == n_groups
    for g, (tx, ty) in enumerate(fed.group_test):
        want_x, want_y = transform(plain.x_test, plain.y_test, kind, g, plain.n_classes, seed=5)
        assert torch.equal(tx, want_x) and torch.equal(ty, want_y) and tx.device == fed.x_test.device
    # The transforms really change something, except for group 0.
    assert torch.equal(fed.group_test[0][0], fed.x_test) and torch.equal(fed.group_test[0][1], fed.y_test)
    changed = [not (torch.equal(tx, fed.x_test) and torch.equal(ty, fed.y_test)) for tx, ty in fed.group_test[1:]]
    assert all(changed)


def test_sign_flip_is_around_zero_of_the_normalised_data() -> None:
    fed = _fed("mnist1d", "4:signal")
    assert fed.group_test is not None
    assert torch.equal(fed.group_test[2][0], -fed.x_test)
    assert abs(float(fed.group_test[2][0].mean())) < 0.1, "the flipped test set stays centred"


def test_groups_none_leaves_the_federation_bit_identical() -> None:
    a = build_federation("digits", "dirichlet:0.5", 10, seed=2)
    b = build_federation("digits", "dirichlet:0.5", 10, seed=2, groups=None)
    for k in ("x", "y", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k)) and getattr(a, k).dtype == getattr(b, k).dtype
    assert all(np.array_equal(u, v) for u, v in zip(a.client_train + a.client_test, b.client_train + b.client_test))
    assert (b.groups, b.client_group, b.group_test) == (None, None, None)


def test_federation_with_groups_does_not_touch_loaded_labels() -> None:
    # On CPU the label tensor shares memory with the loaded arrays: the plain one built
    # after a labelswap federation must still be the plain one.
    before = _fed("digits", None)
    _fed("digits", "4:labelswap")
    after = _fed("digits", None)
    assert torch.equal(before.y, after.y) and torch.equal(before.x, after.x)


def test_build_federation_checks_groups_first() -> None:
    with pytest.raises(ConfigError, match="square images"):
        build_federation("mnist1d", "iid", 10, 0, groups="2:rotate")
    with pytest.raises(ConfigError, match="only 4 clients"):
        build_federation("digits", "iid", 4, 0, groups="5:labelswap")


def test_runner_federation_and_node_cache_carry_groups(tmp_path: Path, make_cfg, monkeypatch) -> None:
    from fldistill.flower.nodecache import _key, load_federation, node_federation, save_federation
    from fldistill.runner import federation_for, resolve_defaults

    monkeypatch.setenv("FLDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = resolve_defaults(make_cfg(groups="4:rotate"))
    fed = federation_for(cfg)
    assert fed.groups == "4:rotate" and fed.client_group is not None and fed.group_test is not None
    save_federation(fed, tmp_path / "f")
    got = load_federation(tmp_path / "f")
    assert got.groups == fed.groups and np.array_equal(got.client_group, fed.client_group)
    assert got.group_test is not None and len(got.group_test) == 4
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got.group_test, fed.group_test))
    assert torch.equal(got.x, fed.x) and torch.equal(got.y, fed.y)
    save_federation(federation_for(resolve_defaults(make_cfg())), tmp_path / "p")
    plain = load_federation(tmp_path / "p")
    assert (plain.groups, plain.client_group, plain.group_test) == (None, None, None)
    assert _key(cfg) != _key(make_cfg()) != _key(make_cfg(groups="4:labelswap")), "groups are part of the cache key"
    assert node_federation(cfg).groups == "4:rotate"


def test_config_key_and_run_name() -> None:
    assert parse_config({}).groups is None
    cfg = parse_config({"groups": "4:rotate", "dataset": "digits"})
    assert cfg.groups == "4:rotate" and "-g4rotate-" in cfg.run_name()
    assert "-g" not in parse_config({}).run_name()
    with pytest.raises(ConfigError, match="groups"):
        parse_config({"groups": 4})


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fldistill.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "digits", "--groups", "5:rotate"], "G <= 4"),
        (["--groups", "2:rotate"], "square images"),
        (["--dataset", "digits", "--groups", "2:signal"], "1-D signals"),
        (["--groups", "101:labelswap"], "only 100 clients"),
        (["--groups", "4:blur"], "unknown kind"),
        (["--groups", "four:rotate"], "integer"),
    ],
)
def test_cli_bad_groups_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    r = _cli(["run", *args, "--out", str(tmp_path / "r"), "--quiet"], tmp_path)
    assert r.returncode == 2, r.stderr
    msg = r.stderr.strip()
    assert "Traceback" not in msg and len(msg.splitlines()) == 1 and needle in msg, msg
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_cli_run_with_groups(tmp_path: Path) -> None:
    from fldistill.cli import main

    tiny = ["--dataset", "digits", "--partition", "iid", "--clients", "8", "--rounds", "1", "--quiet", "--set", "local.amount=1"]
    assert main(["run", *tiny, "--groups", "2:labelswap", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["groups"] == "2:labelswap"
