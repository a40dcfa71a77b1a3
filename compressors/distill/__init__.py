"""Knowledge distillation: losses (pure tensors), ways to get a student, the objective, and the `kd` compressor.

kd.py (config, compressor, offline training) uses objective.py (one step's loss), students.py
(layer-dropped, from scratch, named, same architecture), mutual.py and snapshot.py (the online
and self-distillation loops), all through the one training loop in `compressors.shared.train`.
"""
