"""Versioned prompt templates of datagen (the taxonomy classification prompt)."""
