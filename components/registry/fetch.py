"""``python -m components.registry.fetch URI DEST``: fetch a checkpoint version (verified against its
manifest) into DEST — the init container of the champion's vLLM Deployment (serving.py)."""

from __future__ import annotations

import argparse
import logging

from components.common.logging import setup_logging
from components.common.settings import load_settings
from components.common.storage import fetch_version, open_store

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="checkpoint version URI (…/final)")
    parser.add_argument("dest", help="local folder to fill")
    args = parser.parse_args(argv)
    setup_logging()
    path = fetch_version(open_store(load_settings()), args.uri, args.dest)
    log.info("fetched %s into %s", args.uri, path)


if __name__ == "__main__":
    main()
