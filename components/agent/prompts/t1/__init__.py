"""Prompt version t1: the v1 protocol in as few tokens as possible, for the tiny CPU profile.

Why: a from-scratch model has no use for the paper's explanations, and on two cores every prompt
token costs training time (the v1 system prompt alone is ~466 tokens; the loss covers ~68 a row).
t1 keeps what the model must see to act — the tags, the limits that change the options, the give-up
answer — so rows are short and steps fast. The paper profile keeps v1.
"""
