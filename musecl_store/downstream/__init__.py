"""What the vectors are for: ridge and cross-validation, MLP heads, the evaluation table of
the paper, and stored regressors with their predictions."""
