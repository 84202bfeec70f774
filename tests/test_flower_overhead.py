"""The deployment's speed-ups change how often Flower asks and how a ClientApp process starts, never what it computes.

Unit tests of the wait patches (fldistill.flower.flwrpatch) and of the warm executor's
zygote (fldistill.flower.executor) run in the default suite; a stock Flower deployment
against the default (warm executor, short waits) and in-process is the deployment tier.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

flwr = pytest.importorskip("flwr")

from fldistill.flower import flwrpatch  # noqa: E402
from fldistill.flower.local import LocalDeployment  # noqa: E402
from fldistill.runner import Runner  # noqa: E402
from test_flower import _assert_same_run, stop_leaving_nothing  # noqa: E402  (tests/ is on the path)


def test_capped_time_caps_only_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(flwrpatch._time, "sleep", slept.append)
    t = flwrpatch.CappedTime(0.2)
    t.sleep(3)
    t.sleep(0.05)
    assert slept == [0.2, 0.05]
    assert t.monotonic is flwrpatch._time.monotonic and t.time is flwrpatch._time.time  # the rest is the real module


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "10", "nan"])
def test_poll_seconds_refuses_bad_values(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(flwrpatch.POLL_ENV, raw)
    with pytest.raises(SystemExit, match=f"{flwrpatch.POLL_ENV}=.*between 0.01 and 3"):
        flwrpatch.poll_seconds()


def test_poll_seconds_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(flwrpatch.POLL_ENV, raising=False)
    assert flwrpatch.poll_seconds() is None  # unset: Flower is left alone
    monkeypatch.setenv(flwrpatch.POLL_ENV, "0.5")
    assert flwrpatch.poll_seconds() == 0.5


def _pull_defaults() -> list[dict]:
    from flwr.supercore.inflatable import inflatable_utils as iu

    return [iu.pull_objects.__kwdefaults__, iu.pull_and_inflate_object_from_tree.__kwdefaults__]


def test_shorten_waits_caps_flower_backoff_and_supernode_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as sci

    for d in _pull_defaults():  # restored after the test, key by key
        for k in ("initial_backoff", "backoff_cap", "max_tries_per_object"):
            monkeypatch.setitem(d, k, d[k])
    monkeypatch.setattr(sci, "time", sci.time)
    assert [d["backoff_cap"] for d in _pull_defaults()] == [10, 10]  # Flower 1.41's: 1 s, 2 s, ... 10 s
    assert flwrpatch.shorten_waits(0.1, supernode=True)
    assert all(d["backoff_cap"] == 0.1 and d["initial_backoff"] <= 0.1 and d["max_tries_per_object"] is None for d in _pull_defaults())
    assert isinstance(sci.time, flwrpatch.CappedTime) and sci.time.cap_s == 0.1


def test_shorten_waits_leaves_another_flower_alone(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(flwr, "__version__", "1.99.0")
    before = [dict(d) for d in _pull_defaults()]
    assert not flwrpatch.shorten_waits(0.1)
    assert [dict(d) for d in _pull_defaults()] == before
    assert "not the 1.41" in capsys.readouterr().err


ZYGOTE = textwrap.dedent("""
    import json, os, sys
    from types import SimpleNamespace
    from flwr.supercore.constant import TaskType
    from fldistill.flower import executor as ex

    out = sys.argv[1]
    ex._preload = lambda: None  # the real one imports torch: not what this test is about
    def child(spec):  # what a ClientApp process would run: here, record who ran which token
        with open(os.path.join(out, spec["token"]), "w") as f:
            json.dump({"pid": os.getpid(), "parent": os.getppid(), **spec}, f)
    ex._run_child = child
    r, w = os.pipe()
    zpid = os.fork()
    if zpid == 0:
        os.close(w)
        ex._zygote(r)
    os.close(r)
    launched = []
    class Fallback:
        def launch(self, spec):
            launched.append(spec.token)
            return "fallback"
    e = ex.ZygoteExecutor(w, Fallback())
    spec = lambda tok, tt=TaskType.CLIENT_APP: SimpleNamespace(task_type=tt, runtime_api_address="127.0.0.1:1", token=tok,
                                                          insecure=True, root_certificates_path=None, parent_pid=os.getpid(), task_id=1)
    res = [str(e.launch(spec(t)).status) for t in ("a", "b", "c")]
    assert e.launch(spec("s", TaskType.SERVER_APP)) == "fallback"
    e.close()  # EOF: the zygote exits once it has forked every child
    _, status = os.waitpid(zpid, 0)
    print(json.dumps({"zygote": zpid, "exit": status, "results": res, "fallback": launched}))
""")


def test_zygote_forks_one_child_per_clientapp_task(tmp_path: Path) -> None:
    """Each ClientApp task runs in its own process, a child of the zygote, with its own token;
    other task types go to Flower's executor; closing the pipe ends the zygote."""
    import time

    src = str(Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run([sys.executable, "-c", ZYGOTE, str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["exit"] == 0 and doc["results"] == ["accepted"] * 3 and doc["fallback"] == ["s"]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    ran = {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()}
    assert sorted(ran) == ["a", "b", "c"]
    assert len({r["pid"] for r in ran.values()}) == 3 and {r["parent"] for r in ran.values()} <= {doc["zygote"], 1}
    assert all(r["insecure"] and r["address"] == "127.0.0.1:1" for r in ran.values())


@pytest.mark.slow
@pytest.mark.deployment
def test_stock_and_fast_deployments_match_inprocess(tmp_path: Path, make_cfg) -> None:
    """Stock Flower (a fresh flwr-clientapp per message, Flower's waits) and the default
    (warm executor, waits capped) give the in-process run's numbers and ledger."""
    cfg = make_cfg(clients=3, rounds=2, engine="sequential")
    Runner(cfg, tmp_path / "ref", quiet=True).run()
    for name, kw in (("stock", {"warm": False, "poll_s": None}), ("fast", {})):
        dep = LocalDeployment(3, tmp_path / f"{name}-deploy", trace=tmp_path / f"{name}.jsonl", **kw)
        try:
            dep.start()
            assert bool(dep.executors) == (name == "fast")
            dep.submit(cfg, tmp_path / name, timeout_s=600)
        finally:
            stop_leaving_nothing(dep)
        _assert_same_run(tmp_path / "ref", tmp_path / name)
        events = [json.loads(x)["event"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert events.count("task_end") >= 3 * 2 and ("child_start" in events) == (name == "fast")  # each node trained each round
