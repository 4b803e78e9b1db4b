"""The environment variables llmproxy-testing reads, in one place.

==============================  =================================================================
Variable                        Meaning
==============================  =================================================================
``CI``                          Set (to anything but empty): a test that needs ``redis-server``
                                fails when it is not installed, instead of being skipped
                                (:func:`llmproxy_testing.redis_fixtures.need_redis_server`).
==============================  =================================================================

The fakes read no provider variables. Their docs show ``OPENAI_API_KEY`` and
``OPENAI_BASE_URL`` only as what a client sets to reach a fake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CI = "CI"


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the tests run under continuous integration (``CI`` set and not empty).

    >>> in_ci({"CI": "true"}), in_ci({"CI": ""}), in_ci({})
    (True, False, False)
    """
    env = os.environ if environ is None else environ
    return bool(env.get(CI))
