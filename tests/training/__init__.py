"""Tests of the training package (the trainer). Named tests.training, so it never hides the real
package."""
