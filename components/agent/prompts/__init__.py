"""Versioned prompt templates of the agent protocol (Jinja2 text files, one folder per version).

Why: prompts are data, not code strings (docs/contributing.md habit 7); a new wording is a new folder (v2/),
selected with DMMS_AGENT__PROMPT_VERSION, so old runs stay reproducible. Rendered only through
``components.agent.protocol`` (render_system_prompt, render_initial_user, render_information,
render_invalid). Nothing to run here.
"""
