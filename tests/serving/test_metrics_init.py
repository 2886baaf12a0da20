"""/metrics exports every known counter from zero (no model, no store: fast tier)."""

import os
import subprocess
import sys

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


FRESH_PROCESS = """
import feast.metrics  # sets the multiprocess environment before prometheus_client loads, as `import feast` does
from recfeast.serving.metrics import Metrics
first = Metrics()
first.cache_lookup(True)
first.observe_stage("rank", 0.01)
print(first.render()[0].decode())
print("-----")
print(Metrics().render()[0].decode())
"""


def test_two_apps_metrics_are_independent_after_feast_switched_prometheus_to_multiprocess():
    """Importing Feast first sets PROMETHEUS_MULTIPROC_DIR (for its Gunicorn server); a second Metrics
    in the same process must still start from zero, not from the first one's file-backed values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    first, second = out.split("-----")
    assert 'recfeast_query_cache_total{result="hit"} 1.0' in first
    assert 'recfeast_stage_seconds_count{stage="rank"} 1.0' in first
    assert 'recfeast_query_cache_total{result="hit"} 0.0' in second
    assert 'recfeast_stage_seconds_count{stage="rank"} 0.0' in second
