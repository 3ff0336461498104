"""Hub calls that survive a busy Hub and fail in one line: retries with backoff, and error translation.

huggingface_hub retries only its pre-upload and LFS transfers; ``retrying`` wraps every other call we make
(``create_commit``, ``repo_info``, ``list_repo_files``, branch and repo calls): a 429 or 5xx answer is retried up
to ``RETRIES`` times, waiting what the Hub's ``Retry-After`` header says (capped at ``MAX_WAIT`` seconds), else an
exponential backoff; each retry is logged. ``hub_errors`` turns whatever remains into one ``HubError`` /
``HubAccessError`` line with the token scrubbed out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hf_layerprune.runtime.errors import HubAccessError, HubError, LayerPruneError

logger = logging.getLogger("hf_layerprune.hub")
T = TypeVar("T")
RETRIES = 5
BASE_WAIT = float(os.environ.get("HF_LAYERPRUNE_RETRY_WAIT", "2"))  # seconds before the first retry, doubled after
MAX_WAIT = 60.0
RETRY_STATUS = {429, 500, 502, 503, 504}


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = (getattr(response, "headers", None) or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def retrying(what: str, call: Callable[..., T], *args: Any, on_retry: Callable[[int], None] | None = None,
             **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, retried on 429 / 5xx (see the module docstring). `on_retry(attempt)` runs before
    each retry (e.g. to check whether a commit already landed)."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(1, RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except HfHubHTTPError as exc:
            status = status_of(exc)
            if status not in RETRY_STATUS or attempt == RETRIES:
                raise
            wait = retry_after(exc)
            wait = min(MAX_WAIT, BASE_WAIT * 2 ** (attempt - 1) if wait is None else wait)
            logger.warning("%s: the Hub answered HTTP %s; retry %d of %d in %.1f s", what, status, attempt,
                           RETRIES - 1, wait)
            time.sleep(wait)
            if on_retry is not None:
                on_retry(attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def hub_errors(action: str, token: str | None, after: str = "") -> Iterator[None]:
    """Turn client errors into one-line LayerPruneErrors without the token (and without the chained traceback)."""
    from huggingface_hub.errors import GatedRepoError, HTTPError

    try:
        yield
    except LayerPruneError as exc:
        raise type(exc)(scrub(str(exc), token)) from None
    except (HTTPError, OSError, ValueError, RuntimeError) as exc:
        message = scrub(f"{action} failed: {describe(exc)}" + (f"; {after}" if after else ""), token)
        if isinstance(exc, GatedRepoError) or status_of(exc) in (401, 403):
            raise HubAccessError(message) from None
        raise HubError(message) from None


def describe(exc: BaseException) -> str:
    """The first line of each message along the exception's cause chain, e.g. 'upload of x failed (403 Forbidden)'."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    parts = []
    while exc is not None and len(parts) < 3:
        if isinstance(exc, GatedRepoError):
            parts.append("the repository is gated: accept its licence on its Hub page, then log in with "
                         "`hf auth login` (or set HF_TOKEN)")
        elif isinstance(exc, RepositoryNotFoundError):
            parts.append("repository not found, or not visible to this token")
        elif isinstance(exc, RevisionNotFoundError):
            parts.append("revision not found")
        elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
            server = f": {exc.server_message.strip()}" if exc.server_message else ""
            parts.append(f"HTTP {exc.response.status_code}{server}".splitlines()[0])
            break  # its cause repeats it
        else:
            text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            parts.append(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        exc = exc.__cause__
    return " <- ".join(parts)


def scrub(text: str, token: str | None) -> str:
    """`text` without `token` in any form it may be printed in: as given, stripped, repr- or JSON-escaped."""
    if not token:
        return text
    forms = {token, token.strip(), repr(token)[1:-1], json.dumps(token)[1:-1], repr(token.strip())[1:-1]}
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        text = text.replace(form, "***")
    return text
