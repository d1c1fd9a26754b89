"""Prompt version v2: v1 with the image frame stated — the first user turn gives the size of the image
as the model sees it (``Image size: W x H pixels.``, after the processor's resize), and a crop box is
in pixels of that frame (components/agent/frame.py rescales it to the original image)."""
