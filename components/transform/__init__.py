"""Transform with a preview: TFX's Transform executor, then preview.png in the transform graph."""
