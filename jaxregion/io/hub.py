"""Reaching the Hugging Face hub: fail in seconds, with one line, when it is not reachable.

Without network, ``huggingface_hub`` and ``datasets`` retry for half a minute and log a dozen
lines. :func:`go_offline_if_unreachable` probes the endpoint once (a TCP connect, a few
seconds) and, when it does not answer, switches both libraries to their offline mode: the
local HF cache still serves what it holds, anything else fails at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_checked: bool | None = None


def _offline_env() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub endpoint opens within ``timeout`` seconds, name
    resolution included (``getaddrinfo`` has no timeout of its own: it runs in a thread)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(
                (url.hostname or "huggingface.co", port), timeout=timeout
            ):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True, name="jaxregion-hub-probe")
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def go_offline_if_unreachable() -> bool:
    """Put huggingface_hub/datasets in offline mode when the hub is unreachable (or the
    environment says offline) and quiet their retry logging. Returns True when offline."""
    global _checked
    if _checked is None:
        _checked = _offline_env() or not reachable()
    if _checked:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        for name in ("huggingface_hub", "datasets", "fsspec", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            import huggingface_hub.constants as c

            c.HF_HUB_OFFLINE = True
        except ImportError:
            pass
        try:
            import datasets.config as dc

            dc.HF_HUB_OFFLINE = True
            if hasattr(dc, "HF_DATASETS_OFFLINE"):
                dc.HF_DATASETS_OFFLINE = True
        except ImportError:
            pass
    return _checked


@contextlib.contextmanager
def datasets_cache() -> Iterator[str]:
    """Where ``datasets`` caches what it builds (lm-eval's tasks): ``$JAXREGION_CACHE/datasets``
    when that is set, else ``$HF_DATASETS_CACHE`` when the user set it, else a temporary
    directory removed afterwards. Never a directory the user did not name (``~/.cache``)."""
    root = os.environ.get("JAXREGION_CACHE")
    temp = None
    if root:
        path = os.path.join(root, "datasets")
    elif os.environ.get("HF_DATASETS_CACHE"):
        path = os.environ["HF_DATASETS_CACHE"]
    else:
        path = temp = tempfile.mkdtemp(prefix="jaxregion-datasets-")
    old = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = path  # read when `datasets` is first imported
    patched = None
    with contextlib.suppress(ImportError):
        import datasets.config as dc  # already imported in this process: set it there too

        patched = (dc, dc.HF_DATASETS_CACHE)
        dc.HF_DATASETS_CACHE = path
    try:
        yield path
    finally:
        if patched:
            patched[0].HF_DATASETS_CACHE = patched[1]
        if old is None:
            os.environ.pop("HF_DATASETS_CACHE", None)
        else:
            os.environ["HF_DATASETS_CACHE"] = old
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
