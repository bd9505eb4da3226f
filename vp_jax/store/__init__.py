"""A run's state and where it is kept, read by both training and evaluation.

``state``        TrainState (parameters, BatchNorm statistics, optimiser state) and its creation
``checkpoints``  CheckpointStore: orbax checkpoints with manifests, best/latest, damage detection
"""
