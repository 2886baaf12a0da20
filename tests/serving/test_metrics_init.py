"""/metrics exports every known counter from zero (no model, no store: fast tier)."""

from recfeast.serving.metrics import STAGES, Metrics


def test_counters_and_stages_exported_at_zero_before_any_request():
    m = Metrics()
    m.init_store("sqlite")
    text = m.render()[0].decode()
    for result in ("hit", "miss"):
        assert f'recfeast_query_cache_total{{result="{result}"}} 0.0' in text
    assert 'recfeast_store_errors_total{store="sqlite"} 0.0' in text
    for stage in STAGES:
        assert f'recfeast_stage_seconds_count{{stage="{stage}"}} 0.0' in text
    m.cache_lookup(True)
    text = m.render()[0].decode()
    assert 'recfeast_query_cache_total{result="hit"} 1.0' in text
    assert 'recfeast_query_cache_total{result="miss"} 0.0' in text
