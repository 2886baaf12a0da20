"""Online serving: the lookup SDK, request-time features, retrieval, ranking and the HTTP API.

- :class:`OnlineFeatureClient` / :class:`RankingFeatures` (:mod:`.sdk`): one batched online read
  for one user and many items, from SQLite or Redis.
- :class:`QueryEmbedder` (:mod:`.query`): query embeddings with an LRU cache and micro-batching.
- :class:`ItemIndex` (:mod:`.index`): nearest-neighbour search over item text embeddings (usearch).
- :class:`Ranker` (:mod:`.ranker`), :class:`RecommendService` / :class:`ServiceConfig` (:mod:`.service`):
  ``recommend`` and ``search``.
- :func:`create_app` / :func:`build_app` (:mod:`.api`): the FastAPI app behind ``recfeast serve``.
- :class:`ApiSettings`, :class:`KeyStore` (:mod:`.security`): API keys, scopes, request and rate limits.

Names are imported on first use (the SDK does not pull torch or FastAPI).
"""

_WHERE = {"OnlineFeatureClient": "sdk", "RankingFeatures": "sdk", "QueryEmbedder": "query", "ItemIndex": "index",
          "Ranker": "ranker", "RecommendService": "service", "ServiceConfig": "service",
          "UnknownUserError": "service", "create_app": "api", "build_app": "api", "ApiSettings": "security",
          "KeyStore": "security"}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"recfeast.serving.{_WHERE[name]}"), name)
    raise AttributeError(name)
