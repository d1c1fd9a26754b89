"""Prompt version t2: t1 (the tiny CPU profile's short prompts) with the image frame stated, as v2 does
for v1: ``Image size: W x H pixels.`` in the first user turn, crop boxes in that frame."""
