"""Test helpers for llmproxy and its plugins: fake upstream servers and contract suites.

Importing this package imports nothing heavy; import the submodules you need
(``llmproxy.testing.fake_openai``, ``llmproxy.testing.contracts``).
"""
