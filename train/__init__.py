"""Training side of tinymm: synthetic data, teachers, distillation (may import tinymm, never the reverse)."""
