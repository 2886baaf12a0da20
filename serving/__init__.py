"""Online serving: the lookup SDK (:class:`OnlineFeatureClient`)."""


def __getattr__(name):
    if name in ("OnlineFeatureClient", "RankingFeatures"):
        from recfeast.serving import sdk
        return getattr(sdk, name)
    raise AttributeError(name)
