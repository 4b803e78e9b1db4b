"""Suite-wide settings, loaded before every test directory's own conftest.

Calls made by in-process tests are logged in memory (the usage-log plugin observes every
Proxy), never in the developer's data dir; subprocesses get their own environment.
"""

from __future__ import annotations

import os

os.environ["LLMPROXY_USAGE_LOG_URL"] = "memory://"
