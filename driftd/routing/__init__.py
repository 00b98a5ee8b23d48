"""Conversation routing: each message of a conversation stays in the current
topic branch, opens a new one, or returns to an earlier one.

- :mod:`~driftd.routing.router`: the decision rule and branch state (numpy only).
- :mod:`~driftd.routing.projection`: the topic space the rule compares in, a
  linear map shipped per embed model.
- :mod:`~driftd.routing.text`, :mod:`~driftd.routing.facts`: content words,
  discourse cues, branch topics, and facts extracted by rules.
- :mod:`~driftd.routing.llm`: optional facts from an OpenAI-compatible endpoint.
- :mod:`~driftd.routing.engine`: conversations stored in Chroma through the
  AsyncDriftDB hooks (needs the ``server`` extra), behind the write-ahead log of
  :mod:`~driftd.routing.wal`.
- :mod:`~driftd.routing.types`, :mod:`~driftd.routing.convert`: value types and
  proto conversions, shared with the Python client.

Nothing is imported here, so the client can use the types without the server's
dependencies.
"""
