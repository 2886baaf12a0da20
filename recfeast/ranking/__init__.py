"""The ranking model's shared parts: the fitted input transform (:mod:`.features`), the network
(:mod:`.model`) and the checkpoint format (:mod:`.checkpoint`) that training writes and serving reads."""
