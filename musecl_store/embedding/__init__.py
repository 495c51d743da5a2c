"""Region embeddings from a model version: the per-region inputs, images, the run shared by
train, embed and reembed, and the incremental re-embedding of changed regions."""
