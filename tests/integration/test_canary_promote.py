"""`splitpin canary promote`: the candidate goes into force only on a PROMOTE verdict, through
the same gated, audited governance apply (real broker, the hand-checked canary fixture)."""

from __future__ import annotations

from collections.abc import Callable

from splitpin.app.canary_report import canary_settings, read_comparison
from splitpin.app.promotion import promote
from splitpin.core import governance_store as store
from splitpin.core.kafka.admin import create_topics, delete_topics
from splitpin.core.settings import Settings
from splitpin.schemas.governance import PromotionCriteria
from tests.integration.test_canary_report_broker import SIDE_TOPICS, _publish

LOOSE = PromotionCriteria(
    min_agreement=0.0,
    max_p95_ratio=1000.0,
    max_cost_ratio=1000.0,
    compliance_regressions_allowed=1000,
    min_compared_replies=1,
    max_accuracy_drop=1.0,
)
STRICT = LOOSE.model_copy(update={"min_compared_replies": 1000})


def test_a_candidate_goes_into_force_only_when_the_verdict_is_promote(
    topic_settings: Callable[..., Settings],
) -> None:
    settings = topic_settings()
    canary = canary_settings(settings)
    names = [canary.topic(n) for n in SIDE_TOPICS.values()]
    create_topics(canary, names=names)
    # Not a model swap (no maintenance window needed): a longer cache TTL.
    primary = settings.governance
    candidate = primary.model_copy(
        update={"cache": primary.cache.model_copy(update={"ttl_s": primary.cache.ttl_s + 60})}
    )
    try:
        _publish(settings, canary)
        held = promote(
            settings, candidate, read_comparison(settings, criteria=STRICT), command="test"
        )
        assert held.outcome is None and held.failed == ("compared replies",)
        assert store.current_record(settings) is None, "a HOLD verdict changes nothing"

        done = promote(
            settings, candidate, read_comparison(settings, criteria=LOOSE), command="test"
        )
        assert done.failed == () and done.outcome is not None
        assert done.outcome.action == "applied"
        record = store.current_record(settings)
        assert record is not None and record.version == candidate.version_id()
        (audit,) = [a for a in store.read_audit(settings) if a.to_version == record.version]
        assert audit.command == "test"
    finally:
        delete_topics(settings.bootstrap_servers, names)
