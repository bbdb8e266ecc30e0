"""Budget search: front within budget, rejections with reasons, resume, impossible budget."""

import pytest

from compressor import BudgetError, Int4WeightOnlyConfig, Int8StaticConfig, PruneConfig, read_bundle
from compressor.evaluate import LatencyConfig
from compressor.search import Budget, pareto_front, search
from proto.manifest import Variant

FAST = LatencyConfig(warmup=2, repeats=20)


def _v(i, q, size, lat):
    return Variant(id=i, file=f"{i}.onnx", digest="sha256:" + "0" * 64, size_bytes=size,
                   method="m", weight_bits=8, activation_bits=8, quality=q, latency_p50_seconds=lat)


def test_pareto_front_by_hand():
    a, b, c, d = _v("a", 0.99, 100, 1.0), _v("b", 0.98, 50, 1.0), _v("c", 0.97, 60, 2.0), _v("d", 0.99, 100, 0.5)
    front, beaten = pareto_front([a, b, c, d])
    assert {v.id for v in front} == {"b", "d"}
    assert beaten == {"a": "d", "c": "b"}
    # Latencies within LATENCY_TIE are a tie: e is not beaten by f's 5 % lower p50, but is by
    # g's smaller size at a p50 only 5 % higher.
    e, f, g = _v("e", 0.98, 100, 1.0), _v("f", 0.97, 100, 0.95), _v("g", 0.98, 90, 1.05)
    front, beaten = pareto_front([e, f])
    assert {v.id for v in front} == {"e"} and beaten == {"f": "e"}
    front, beaten = pareto_front([e, g])
    assert {v.id for v in front} == {"g"} and beaten == {"e": "g"}


def test_budget_rejects_bad_values():
    with pytest.raises(ValueError):
        Budget(max_quality_drop=-0.1)
    with pytest.raises(ValueError):
        Budget(0.01, max_size_bytes=0)


def test_search_front_resume_and_rejections(digits, tmp_path):
    cands = [Int8StaticConfig(), Int4WeightOnlyConfig(),
             PruneConfig(pattern="channel", sparsity=0.5, int8=True, finetune_epochs=3),
             PruneConfig(id="pruned90-int8", pattern="channel", sparsity=0.9, int8=True,
                         finetune_epochs=0)]
    kw = dict(candidates=cands, calib_data=digits.calibration[0], eval_data=digits.heldout,
              train_data=digits.train, work_dir=tmp_path / "work", latency=FAST, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        search(digits.model, Budget(0.01), stop_after=2, **kw)       # interrupted
    res = search(digits.model, Budget(0.01), out_dir=tmp_path / "bundle",
                 signing_key=tmp_path / "k.pem", **kw)
    assert res.resumed == ["fp32", "int8"]                            # not rebuilt
    ref = res.reference_quality
    assert res.front and all(ref - v.quality <= 0.01 for v in res.front)
    reasons = {r.id: r.reason for r in res.rejected}
    assert "quality drop" in reasons["pruned90-int8"]
    ids = {v.id for v in res.front} | set(reasons)
    assert ids == {"fp32"} | {c.id for c in cands}                    # everything accounted for
    b = read_bundle(tmp_path / "bundle")
    assert {v.id for v in b.manifest.variants} == {v.id for v in res.front}
    # ... and a real server accepts it as written (stored form: any deflated variant as such)
    from server.admin_client import AdminClient
    from server.app import serve
    from server.config import ServerConfig

    running = serve(ServerConfig(data_dir=tmp_path / "server", port=0, metrics_port=-1,
                                 trusted_publisher_keys=[b.publisher_key]))
    try:
        with AdminClient(running.address, running.operator_token) as admin:
            assert admin.upload_bundle(tmp_path / "bundle").bundle_id == b.bundle_id
    finally:
        running.stop(grace=0)


def test_budget_nothing_can_meet_is_a_clear_error(digits, tmp_path):
    with pytest.raises(BudgetError, match="no variant meets the budget"):
        search(digits.model, Budget(0.01, max_size_bytes=1000), candidates=[Int4WeightOnlyConfig()],
               eval_data=digits.heldout, work_dir=tmp_path / "w", latency=FAST, show_progress=False)
