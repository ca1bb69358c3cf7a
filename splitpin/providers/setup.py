"""Build the model backends the flow calls: the provider registry and the retriever.

The knowledge bases (the shipped ones and the governance config's `knowledge.bases`) are
always loaded, their embeddings computed once per file content and cached on disk: sources
are retrieved locally for remote providers too, so that citations can be checked. The
local fleet shares the classifier's embedder, one ONNX session per process, and answers
the roles the registry gives it (mode `local`, or `auto` without a key).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from splitpin.core.redaction import check_secret_env
from splitpin.core.router.classifier import Classifier
from splitpin.providers.knowledge_base import KnowledgeBases, Retriever
from splitpin.providers.local_fleet import LocalFleet
from splitpin.providers.registry import ProviderRegistry, key_variables
from splitpin.schemas.governance import GovernanceConfig

log = logging.getLogger(__name__)


def build_model_backends(
    governance: GovernanceConfig,
    classifier: Classifier,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[ProviderRegistry, Retriever]:
    """Sources are retrieved locally for every provider, so citations can be checked."""
    bases = KnowledgeBases.for_config(classifier.embedder, governance.knowledge)
    fleet = LocalFleet(governance, bases, classifier.embedder, classifier)
    env = os.environ if env is None else env
    # Each role's key variable (`api_key_env`) gets the CLI's start-up check: a key with a
    # stray newline stops start-up naming the variable (ConfigError), never the value.
    check_secret_env(env, key_variables(governance))
    registry = ProviderRegistry.build(governance, env=env, local=fleet.provider)
    for role, backend in registry.describe().items():
        log.info("role %s answered by %s", role, backend)
    return registry, fleet.retriever
