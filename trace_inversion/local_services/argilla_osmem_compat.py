"""argilla-server on osmem: the scripted index updates, done as read-modify-write.

argilla-server 2.8.0 keeps a record's responses and suggestions in its search index
up to date with painless scripts (``search_engine/commons.py``):

* ``update_record_response`` -- drop the record's response with this id, append it
  (every single-response create, update, upsert: what the web UI sends on submit,
  save as draft and discard);
* ``delete_record_response`` -- drop the response with this id;
* ``delete_record_suggestion`` -- ``ctx._source["suggestions"].remove(question)``.

``osmem-server``, the in-memory OpenSearch stand-in the local stack runs, answers every
``_update`` with a script ``400 update with script is not supported by osmem``, so
those UI calls end in HTTP 500. And ``_map_record_response_to_es`` calls
``response.values.items()``, which raises for a discard without answers (stored with
``values: null``) -- in any engine, also when records are (re)indexed.

**How.** This module is the launcher of every ``argilla_server`` command the stack
runs (``python -I argilla_osmem_compat.py start|worker|database ...|search-engine
reindex`` with the server's own interpreter): it patches ``OpenSearchEngine`` and
then hands over to argilla-server's CLI. The three scripted updates become
read-modify-write: GET the document with its ``_seq_no``/``_primary_term``, apply
the script's effect in Python, write it back with ``if_seq_no``/``if_primary_term``
and retry on a version conflict -- optimistic concurrency, which osmem implements,
so concurrent reviewers (and the record-status updates argilla makes between them)
never lose an update. Responses without values map to no answers.

**Why here rather than a proxy in front of osmem.** A reverse proxy would have to
recognise painless source text on the wire and could not fix the ``values: null``
crash, which happens inside argilla-server before any request; patching the three
methods where they are defined is smaller, exact, needs no extra process or port,
and touches nothing outside the stack (the server's virtual environment is not
modified; other users of it are unaffected). The patch checks that it replaces what
it expects (argilla-server 2.8.0, pinned by ``scripts/setup_argilla_server.sh``)
and refuses to start otherwise; any other scripted update fails with a message
naming this module.

Runs with the argilla-server interpreter only (stdlib + argilla_server imports);
``-I`` keeps this folder (whose modules shadow stdlib names) off ``sys.path``.
"""

from __future__ import annotations

import sys

EXPECTED_VERSION = "2.8.0"
PATCHED = ("update_record_response", "delete_record_response", "delete_record_suggestion")
MAX_RETRIES = 50


def _response_doc(response) -> dict:
    from argilla_server.search_engine.commons import es_path_for_question_response

    return {"id": response.id, "status": response.status, "user_id": response.user_id,
            **{es_path_for_question_response(q): (v or {}).get("value")
               for q, v in (response.values or {}).items()}}


def install() -> None:
    """Patch argilla-server's OpenSearch engine (idempotent)."""
    import asyncio
    import inspect
    import json

    import argilla_server
    from argilla_server.search_engine import commons
    from argilla_server.search_engine.opensearch import OpenSearchEngine
    from fastapi.encoders import jsonable_encoder
    from opensearchpy.exceptions import ConflictError

    base = commons.BaseElasticAndOpenSearchEngine
    if getattr(base, "_ti_osmem_compat", False):
        return
    version = getattr(argilla_server, "__version__", "?")
    for name in PATCHED:
        if "script" not in inspect.getsource(getattr(base, name)):
            raise RuntimeError(f"argilla_osmem_compat: argilla-server {version}: {name} no longer uses a script; "
                               f"this patch was written for {EXPECTED_VERSION} (scripts/setup_argilla_server.sh)")
    if version != EXPECTED_VERSION:
        print(f"argilla_osmem_compat: warning: written for argilla-server {EXPECTED_VERSION}, found {version}",
              file=sys.stderr)

    async def read_modify_write(self, index_name: str, doc_id: str, change) -> None:
        """ES's own algorithm for a scripted update, with optimistic concurrency."""
        for _ in range(MAX_RETRIES):
            got = await self.client.get(index=index_name, id=doc_id)
            source = got["_source"]
            change(source)
            try:
                await self.client.index(index=index_name, id=doc_id, body=source, refresh=True,
                                        if_seq_no=got["_seq_no"], if_primary_term=got["_primary_term"])
                return
            except ConflictError:
                await asyncio.sleep(0.01)
        raise RuntimeError(f"argilla_osmem_compat: {index_name}/{doc_id}: {MAX_RETRIES} version conflicts in a row")

    def _drop(source: dict, response_id: str) -> list:
        return [r for r in (source.get("responses") or []) if str(r.get("id")) != response_id]

    async def update_record_response(self, response) -> None:
        doc = jsonable_encoder(_response_doc(response))

        def change(source):
            source["responses"] = _drop(source, str(response.id)) + [doc]

        await read_modify_write(self, commons.es_index_name_for_dataset(response.record.dataset),
                                str(response.record.id), change)

    async def delete_record_response(self, response) -> None:
        def change(source):
            source["responses"] = _drop(source, str(response.id))

        await read_modify_write(self, commons.es_index_name_for_dataset(response.record.dataset),
                                str(response.record.id), change)

    async def delete_record_suggestion(self, suggestion) -> None:
        def change(source):
            (source.get("suggestions") or {}).pop(suggestion.question.name, None)

        await read_modify_write(self, commons.es_index_name_for_dataset(suggestion.record.dataset),
                                str(suggestion.record_id), change)

    original_update = OpenSearchEngine._update_document_request

    async def _update_document_request(self, index_name: str, id: str, body: dict):
        if "script" in body:
            raise RuntimeError("argilla_osmem_compat: a scripted update this patch does not handle (osmem has no "
                               f"scripts): {json.dumps(body)[:300]}")
        return await original_update(self, index_name, id, body)

    OpenSearchEngine.update_record_response = update_record_response
    OpenSearchEngine.delete_record_response = delete_record_response
    OpenSearchEngine.delete_record_suggestion = delete_record_suggestion
    OpenSearchEngine._update_document_request = _update_document_request
    # also used when records are (re)indexed in bulk: a discard without answers has values None
    base._map_record_response_to_es = staticmethod(_response_doc)
    base._ti_osmem_compat = True


def main(argv: list[str]) -> None:
    """Patch, then run ``python -m argilla_server ARGV``."""
    install()
    from argilla_server.cli import app

    sys.argv = ["argilla_server", *argv]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
