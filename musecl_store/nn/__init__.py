"""The image, text and fusion networks of MuseCL, and the count features: plain
``nn.Module``s that the store loads to embed regions, without importing the trainer."""
