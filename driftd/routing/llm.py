"""Optional fact extraction by an OpenAI-compatible chat-completions endpoint.

Off unless the operator sets ``DRIFTD_FACTS_LLM_URL`` (the API base, e.g.
``http://127.0.0.1:11434/v1`` for a local server, or ``https://api.openai.com/v1``);
then ExtractFacts asks ``{url}/chat/completions`` for the facts of a branch as a
JSON array. Nothing else in driftd calls it, and the rule extractor
(:mod:`driftd.routing.facts`) needs no endpoint.

Environment:
    DRIFTD_FACTS_LLM_URL: API base URL; empty or unset disables the extractor.
    DRIFTD_FACTS_LLM_MODEL: model name (default ``gpt-4o-mini``).
    DRIFTD_FACTS_LLM_API_KEY: sent as a Bearer token when set.
    DRIFTD_FACTS_LLM_TIMEOUT: seconds per request (default 30).

Uses only the standard library (``urllib``); :func:`extract` blocks, so the
engine runs it in a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from driftd.errors import Unavailable
from driftd.routing.facts import SourceMessage
from driftd.routing.types import Fact

_PROMPT = (
    "Extract the facts stated in this conversation excerpt: names, dates, times, places, "
    "quantities, prices, preferences and decisions. Answer with only a JSON array of "
    'objects {"key": short lower-case name, "value": the value as written, '
    '"confidence": 0-1}. Later statements override earlier ones.'
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_MAX_FACTS = 50


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to call the endpoint."""

    url: str
    model: str = "gpt-4o-mini"
    api_key: str = ""
    timeout_seconds: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LLMConfig | None:
        """The config from ``DRIFTD_FACTS_LLM_*``; None when no URL is set.

        Raises:
            ValueError: DRIFTD_FACTS_LLM_TIMEOUT is not a positive number.
        """
        env = os.environ if environ is None else environ
        url = env.get("DRIFTD_FACTS_LLM_URL", "").strip()
        if not url:
            return None
        timeout = float(env.get("DRIFTD_FACTS_LLM_TIMEOUT", "30"))
        if not timeout > 0:
            raise ValueError(f"DRIFTD_FACTS_LLM_TIMEOUT must be positive, got {timeout}")
        return cls(
            url=url.rstrip("/"),
            model=env.get("DRIFTD_FACTS_LLM_MODEL", "") or cls.model,
            api_key=env.get("DRIFTD_FACTS_LLM_API_KEY", ""),
            timeout_seconds=timeout,
        )

    @property
    def name(self) -> str:
        """The extractor's name in ExtractFacts responses."""
        return f"llm:{self.model}"


def request_body(model: str, messages: Sequence[SourceMessage]) -> dict:
    """The chat-completions request for a branch's messages (temperature 0)."""
    transcript = "\n".join(f"[{m.id}] {m.role}: {m.content}" for m in messages)
    return {
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": _PROMPT},
            {"role": "user", "content": transcript},
        ],
    }


def parse_facts(answer: str, messages: Sequence[SourceMessage]) -> list[Fact]:
    """Facts from the model's answer: a JSON array (optionally in a code fence)
    of ``{key, value, confidence}``; malformed items are skipped, confidences
    clipped to 0-1 (missing: 0.5). A fact's source is the latest message whose
    text contains its value.

    Raises:
        ValueError: the answer is not a JSON array.
    """
    data = json.loads(_FENCE.sub("", answer.strip()))
    if not isinstance(data, list):
        raise ValueError("the answer is not a JSON array")
    facts = []
    for item in data[:_MAX_FACTS]:
        if not isinstance(item, dict):
            continue
        key, value = str(item.get("key", "")).strip(), str(item.get("value", "")).strip()
        if not key or not value:
            continue
        try:
            conf = min(1.0, max(0.0, float(item.get("confidence", 0.5))))
        except (TypeError, ValueError):
            conf = 0.5
        source = next((m.id for m in reversed(messages) if value.lower() in m.content.lower()), "")
        facts.append(Fact(key.lower(), value, conf, source))
    return sorted(facts, key=lambda f: -f.confidence)


def extract(config: LLMConfig, messages: Sequence[SourceMessage]) -> list[Fact]:
    """Asks the endpoint for the facts of ``messages`` (blocking).

    Raises:
        Unavailable(FACTS_EXTRACTOR_FAILED): the endpoint cannot be reached,
            answers with an error, or its answer is not a JSON array of facts.
    """
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    req = urllib.request.Request(
        f"{config.url}/chat/completions",
        data=json.dumps(request_body(config.model, messages)).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=config.timeout_seconds) as resp:
            body = json.loads(resp.read())
        return parse_facts(body["choices"][0]["message"]["content"], messages)
    except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise Unavailable(
            f"the fact extractor at {config.url} failed: {exc}",
            reason="FACTS_EXTRACTOR_FAILED",
            metadata={"url": config.url, "model": config.model},
        ) from exc
