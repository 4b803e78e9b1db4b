"""Test helpers for llmproxy and its plugins: fake upstream servers and contract suites.

The ``llmproxy-testing`` distribution, separate from the ``llmproxy`` core so that production
installs carry neither the fakes nor pytest. Importing this package imports nothing heavy;
import the submodules you need (``llmproxy_testing.fake_openai``,
``llmproxy_testing.contracts``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
