"""A tenant brings its own knowledge base: a JSON-lines file named in the governance config.

The governance file (in tmp_path) names `acme-faq: acme-faq.jsonl`, a relative path, so it
is resolved against the file's folder, and gives it to acme-bank. The whole flow runs with
the local fleet (no API keys): acme-bank's final replies must cite an article of that file
(ids InternalDoc-7001.., which no shipped base has) and quote its text; another tenant is
still answered from the shipped banking77 base. The embeddings of the tenant's file land in
the on-disk cache under $XDG_CACHE_HOME/splitpin/embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from splitpin.core.router.classifier import Classifier
from splitpin.core.settings import load_settings
from splitpin.schemas.replies import Reply
from tests.factories import T0_PAST_SKEW_S, event_dict, raw
from tests.governance_files import save_config, shipped_config
from tests.in_memory_flow import run_in_memory

ACME_ARTICLES: list[dict[str, Any]] = [
    {
        "id": "InternalDoc-7001",
        "title": "How do I order a replacement Acme Platinum card?",
        "text": "Acme Platinum members order a replacement card from the Acme Vault app under "
        "Cards, then Replace card. The new Platinum card arrives by tracked courier within "
        "two working days and your old card stops working once the new one is activated.",
        "intent": "acme_platinum_replacement",
    },
    {
        "id": "InternalDoc-7002",
        "title": "How do I earn and spend Acme Starpoints?",
        "text": "Every purchase with an Acme card earns Starpoints, one point per pound. "
        "Spend Starpoints in the Acme Vault app on flights, hotel stays or cashback; points "
        "expire thirty-six months after they were earned.",
    },
    {
        "id": "InternalDoc-7003",
        "title": "What does the Acme travel lounge pass include?",
        "text": "The Acme lounge pass gives Platinum members and one guest free entry to over "
        "a thousand airport lounges. Show the pass in the Acme Vault app at the lounge desk.",
        "compliance": False,
    },
]
ACME_TEXTS = {a["id"]: str(a["text"]) for a in ACME_ARTICLES}


def test_a_tenant_with_its_own_kb_is_answered_from_it(
    classifier: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    kb = conf / "acme-faq.jsonl"
    kb.write_text("".join(json.dumps(a) + "\n" for a in ACME_ARTICLES), encoding="utf-8")
    config = shipped_config()
    config["knowledge"]["bases"] = {"acme-faq": "acme-faq.jsonl"}  # relative to the config
    config["knowledge"]["tenants"]["acme-bank"] = "acme-faq"
    path = save_config(config, conf)
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # not the config's folder: the relative path must not use cwd
    settings = load_settings(
        topic_prefix="tkb.", governance_path=path, max_past_skew_s=T0_PAST_SKEW_S
    )
    asks = [
        ("acme-0", "acme-bank", "email", "how do I get a replacement for my Platinum card?"),
        ("acme-1", "acme-bank", "chat", "how can I spend my Starpoints on a flight?"),
        ("acme-2", "acme-bank", "email", "what does the airport lounge pass include?"),
        ("other-0", "fintech-x", "email", "my card has not arrived yet, what should I do?"),
    ]
    records = [
        raw(event_dict(eid, f"c-{eid}", text=text, channel=channel, tenant_id=tenant), offset=n)
        for n, (eid, tenant, channel, text) in enumerate(asks)
    ]
    replies = run_in_memory(settings, records, classifier).decoded(Reply, "replies")
    finals = {r.reply_id: r for r in replies if r.kind == "final"}
    assert set(finals) == {eid for eid, *_ in asks}, "every event gets exactly one final"
    assert len(finals) == len([r for r in replies if r.kind == "final"])
    expected = {"acme-0": "InternalDoc-7001", "acme-1": "InternalDoc-7002"}
    expected["acme-2"] = "InternalDoc-7003"
    for reply_id, doc_id in expected.items():
        reply = finals[reply_id]
        assert reply.citations, f"{reply_id}: {reply.status} without a citation"
        cited = reply.citations[0]
        assert (cited.doc_id, cited.source) == (doc_id, f"kb:acme-faq/{doc_id}"), reply
        assert ACME_TEXTS[doc_id] in reply.text
    other = finals["other-0"]
    assert other.citations and all(c.source.startswith("kb:banking77/") for c in other.citations)
    assert not any("Acme Vault" in r.text for r in replies if r.reply_id == "other-0")
    cached = list((tmp_path / "cache" / "splitpin" / "embeddings").glob("*.npz"))
    assert len(cached) == 4, "banking77, abcd, smalltalk and acme-faq, embedded once each"
