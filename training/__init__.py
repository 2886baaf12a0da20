"""Training: labelled examples, point-in-time training sets, the ranking model, evaluation.

``recfeast.training.train(TrainConfig(...))`` is the importable entry point (``recfeast train``).
"""


def __getattr__(name):
    if name in ("train", "TrainConfig"):
        from recfeast.training import config, task
        return {"train": task.train, "TrainConfig": config.TrainConfig}[name]
    raise AttributeError(name)
