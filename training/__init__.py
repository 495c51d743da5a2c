"""The MuseCL trainer: pair sampling, losses and training loops.

It builds on the inference modules that the store loads without importing this package
(encoders and attentive fusion). Nothing is trained yet: see the issue "MuseCL training".
"""

__all__: list[str] = []
