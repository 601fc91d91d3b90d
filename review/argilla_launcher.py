"""Runs the Argilla server CLI with a search engine for the in-memory ``osmem`` OpenSearch.

This file runs inside the *server* virtualenv (``python PATH/argilla_launcher.py ARGS``): it imports
only argilla_server and the standard library, never thresher. It registers the engine
``thresher-osmem`` (select it with ``ARGILLA_SEARCH_ENGINE=thresher-osmem``), then hands the
arguments to argilla_server's own CLI (``database migrate``, ``start``, ``worker``, ...).

osmem rejects two things Argilla sends, and this engine closes both gaps:

* ``knn`` queries (vector similarity): the vectors are read back from the index and ranked in
  numpy by cosine similarity, reported as ``(1 + cos) / 2`` like OpenSearch's cosinesimil space.
  Like OpenSearch, the top k are taken first and the filters applied after (a post filter).
* ``_update`` with painless scripts (responses added/removed, suggestions removed): done as
  read-modify-reindex of the document, guarded by ``if_seq_no``/``if_primary_term`` and retried on
  409, so several worker processes writing the same record stay correct.

It also builds two pydantic adapters once instead of per record (``_speedups``; set
``THRESHER_SERVER_SPEEDUPS=0`` to run the server exactly as shipped).

One extra command, ``prepare``, runs migrate, creates the owner if missing (credentials from the
environment, never printed) and reindexes the search engine, in one process.

``ARGILLA_REDIS_URL`` carries Redis's password; argilla_server names that URL when Redis does not
answer at start, so ``start`` reports it with the password masked (``_quiet_redis_url``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from typing import Any

ENGINE_NAME = "thresher-osmem"
_PAGE = 1000
_MAX_RETRIES = 50
_SUGGESTION_DELETE = re.compile(r'ctx\._source\["suggestions"\]\.remove\("(?P<name>[^"]+)"\)')
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)


class _MaskPasswords(logging.Filter):
    """Masks URL passwords in a log record's message (backoff logs each failed Redis ping)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_url_passwords(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _quiet_redis_url() -> None:
    """Mask the Redis password in the error the server raises, and in the retries it logs, when
    Redis does not answer at start."""
    from argilla_server import _app

    logging.getLogger("backoff").addFilter(_MaskPasswords())

    ping = _app.configure_redis

    def configure_redis() -> None:
        try:
            ping()
        except ConnectionError as err:
            raise ConnectionError(mask_url_passwords(str(err))) from None

    _app.configure_redis = configure_redis


def _register_engine() -> None:
    """Register ``thresher-osmem``: argilla_server's OpenSearchEngine with knn and script
    updates done here, on the client side (see the module doc)."""
    from argilla_server.search_engine import SearchEngine
    from argilla_server.search_engine.commons import es_field_for_vector_settings
    from argilla_server.search_engine.opensearch import OpenSearchEngine

    @SearchEngine.register(engine_name=ENGINE_NAME)
    class OsmemSearchEngine(OpenSearchEngine):
        """OpenSearchEngine with knn and script updates done client-side (see module doc)."""

        async def _request_similarity_search(
            self,
            index: str,
            vector_settings: Any,
            value: list[float],
            k: int,
            excluded_id: Any = None,
            query_filters: list[dict] | None = None,
        ) -> dict:
            field = es_field_for_vector_settings(vector_settings)
            ids, vectors = await _all_vectors(self.client, index, field)
            hits = _nearest(ids, vectors, value, k, excluded_id)
            if hits and query_filters:
                # OpenSearch applies these as a post_filter on the top k: same order here.
                allowed = await _ids_matching(
                    self.client,
                    index,
                    [h["_id"] for h in hits],
                    {"bool": {"should": query_filters, "minimum_should_match": len(query_filters)}},
                )
                hits = [h for h in hits if h["_id"] in allowed]
            return {"hits": {"hits": hits, "total": {"value": len(hits), "relation": "eq"}}}

        async def _update_document_request(self, index_name: str, id: str, body: dict):
            script = body.get("script")
            if script is None:
                return await super()._update_document_request(index_name, id, body)
            await _update_by_script(self.client, index_name, id, script)
            return None


def _nearest(
    ids: list[str], vectors: list, value: list[float], k: int, excluded_id: Any
) -> list[dict]:
    """The ``k`` hits nearest ``value`` by cosine, best first (ties in ``ids`` order), without
    ``excluded_id``; each ``_score`` is ``(1 + cos) / 2`` in [0, 1], higher = more similar."""
    import numpy as np

    hits: list[dict] = []
    if not ids:
        return hits
    matrix = np.asarray(vectors, dtype="float32")
    query = np.asarray(value, dtype="float32")
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
    cos = matrix @ query / np.where(norms == 0, 1.0, norms)
    order = np.argsort(-cos, kind="stable")
    excluded = str(excluded_id) if excluded_id else None
    for pos in order:
        if ids[pos] == excluded:
            continue
        hits.append({"_id": ids[pos], "_score": float((1.0 + cos[pos]) / 2.0)})
        if len(hits) >= k:
            break
    return hits


async def _all_vectors(client: Any, index: str, field: str) -> tuple[list[str], list]:
    """The ids and vectors of every document of ``index`` with ``field``, paged by ``_id``."""
    ids: list[str] = []
    vectors: list = []
    search_after = None
    while True:
        body: dict[str, Any] = {
            "query": {"exists": {"field": field}},
            "_source": [field],
            "sort": [{"_id": "asc"}],
            "size": _PAGE,
        }
        if search_after is not None:
            body["search_after"] = search_after
        page = (await client.search(index=index, body=body))["hits"]["hits"]
        for hit in page:
            node: Any = hit.get("_source") or {}
            for part in field.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node:
                ids.append(hit["_id"])
                vectors.append(node)
        if len(page) < _PAGE:
            return ids, vectors
        search_after = page[-1].get("sort") or [page[-1]["_id"]]


async def _ids_matching(client: Any, index: str, ids: list[str], query: dict) -> set[str]:
    """Those of ``ids`` whose documents in ``index`` match ``query``."""
    body = {"query": {"bool": {"filter": [{"ids": {"values": ids}}, query]}}}
    response = await client.search(index=index, body=body, _source=False, size=len(ids))
    return {hit["_id"] for hit in response["hits"]["hits"]}


async def _update_by_script(client: Any, index_name: str, id: str, script: Any) -> None:
    """Apply ``script`` to document ``id`` as read-modify-reindex, retried when another writer
    changed the document in between (409)."""
    from opensearchpy.exceptions import ConflictError

    for _ in range(_MAX_RETRIES):
        current = await client.get(index=index_name, id=id)
        source = _apply_script(current["_source"], script)
        try:
            await client.index(
                index=index_name,
                id=id,
                body=source,
                params={
                    "if_seq_no": current["_seq_no"],
                    "if_primary_term": current["_primary_term"],
                    "refresh": "true",
                },
            )
            return
        except ConflictError:
            continue
    raise RuntimeError(f"document {id} in {index_name} kept changing; update not applied")


def _speedups() -> None:
    """Two fixes of per-record waste in argilla_server's bulk upsert (same results).

    ``Question.parsed_settings`` and ``MetadataProperty.parsed_settings`` construct a new pydantic
    ``TypeAdapter`` on every access (a third of the server's CPU in a bulk upsert with metadata);
    the adapter is stateless, so one per type validates the same for a fraction of the cost.
    """
    from argilla_server.models import database
    from pydantic import TypeAdapter

    questions = TypeAdapter(database.QuestionSettings)
    metadata = TypeAdapter(database.MetadataPropertySettings)
    database.Question.parsed_settings = property(
        lambda self: questions.validate_python(self.settings)
    )
    database.MetadataProperty.parsed_settings = property(
        lambda self: metadata.validate_python(self.settings)
    )

    # Record webhooks: the bulk paths build a full event per record (six queries and a model
    # dump) and only then find that no webhook is enabled. Ask that first; same result.
    import weakref

    from argilla_server.bulk import records_bulk
    from argilla_server.contexts import webhooks

    original = records_bulk.notify_record_event_v1
    no_webhooks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per request session

    async def notify_record_event(db, record_event, record):
        if db not in no_webhooks:
            no_webhooks[db] = not await webhooks.list_enabled_webhooks(db)
        if no_webhooks[db]:
            return []
        return await original(db, record_event, record)

    records_bulk.notify_record_event_v1 = notify_record_event


def _apply_script(source: dict, script: Any) -> dict:
    """The document after one of the painless scripts argilla_server sends (see commons.py)."""
    if isinstance(script, str):
        match = _SUGGESTION_DELETE.fullmatch(script.strip())
        if not match:
            raise ValueError(f"unsupported update script: {script[:80]!r}")
        suggestions = dict(source.get("suggestions") or {})
        suggestions.pop(match["name"], None)
        return {**source, "suggestions": suggestions}
    text = script.get("source", "")
    params = script.get("params") or {}
    response = params.get("response")
    if response is None or "responses" not in text:
        raise ValueError(f"unsupported update script: {text[:80]!r}")
    responses = [r for r in (source.get("responses") or []) if r.get("id") != response.get("id")]
    if "add(params.response)" in text:
        responses.append(response)
    return {**source, "responses": responses}


def _prepare() -> None:
    """migrate, create the owner from THRESHER_OWNER_* if missing, reindex: one process."""
    import asyncio

    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.cli.database.users.create import _create
    from argilla_server.cli.search_engine.reindex import _reindex
    from argilla_server.enums import UserRole

    quiet = io.StringIO()
    migrate_db(revision="head")

    async def owner_and_reindex() -> None:
        username = os.environ.get("THRESHER_OWNER_USERNAME")
        if username:
            await _create(
                first_name=username,
                username=username,
                role=UserRole.owner,
                password=os.environ["THRESHER_OWNER_PASSWORD"],
                api_key=os.environ["THRESHER_OWNER_API_KEY"],
                workspace=[],
            )
        if os.environ.get("THRESHER_REINDEX") == "1":
            await _reindex(None)

    # The user CLI echoes the API key and reindex draws progress bars: keep both out of logs.
    with contextlib.redirect_stdout(quiet):
        asyncio.run(owner_and_reindex())
    print("prepared", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _register_engine()
    if os.environ.get("THRESHER_SERVER_SPEEDUPS", "1") == "1":
        _speedups()
    if args[:1] == ["prepare"]:
        _prepare()
        return
    if args[:1] == ["start"]:
        _quiet_redis_url()
    from argilla_server.cli import app

    sys.argv = ["argilla_server", *args]
    app()


if __name__ == "__main__":
    main()
