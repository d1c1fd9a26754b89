"""Prompt version v1: the paper's multi-stage prompt (initial, after image search, after text search), in our words."""
