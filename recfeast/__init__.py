"""recfeast: a real-time feature platform for search and recommendation, built on Feast.

The package is laid out as in the design notes (``../shared/DESIGN.md``): ``recfeast.materialize`` (read, clean, encode, write feature
tables, load the online store), ``recfeast.serving`` (online lookup SDK), ``recfeast.training``.
Declarations live in the repository's ``feature_repo/`` folder, which Feast reads on ``feast apply``.
"""

__version__ = "0.1.0"
