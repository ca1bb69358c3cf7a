"""One logger for every librdkafka client splitpin creates.

librdkafka prints its own logs (connection refused while a broker starts, coordinator
load in progress, ...) straight to stderr unless a Python logger is configured. Routing
them here lets the CLI show errors and hide routine retries; libraries stay silent
unless the application configures logging.
"""

from __future__ import annotations

import logging

LIBRDKAFKA_LOGGER = logging.getLogger("splitpin.kafka.librdkafka")
LIBRDKAFKA_LOGGER.addHandler(logging.NullHandler())
