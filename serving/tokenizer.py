"""The next-token models' text tokenizer, rebuilt from the model's own metadata.

The server tokenizes exactly as training did (docs/contracts.md), so a client may send a sentence
as a BYTES tensor instead of token ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tokenizer:
    """The next-token tokenizer described by a model's metadata (docs/contracts.md)."""

    pattern: re.Pattern[str]
    index: dict[str, int]
    unk_id: int
    pad_id: int
    window: int | None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Tokenizer | None:
        """Build from ``vocabulary``/``tokenizer_pattern``/``unk_token``; None if incomplete."""
        if metadata.get("task") != "next-token" or "vocabulary" not in metadata:
            return None
        vocabulary = json.loads(metadata["vocabulary"])
        index = {token: i for i, token in enumerate(vocabulary)}
        unk = metadata.get("unk_token", "<unk>")
        unk_id = index.get(unk, 0)
        window = metadata.get("window")
        return cls(
            pattern=re.compile(metadata.get("tokenizer_pattern", r"\w+|[^\w\s]")),
            index=index,
            unk_id=unk_id,
            pad_id=index.get("<pad>", unk_id),
            window=int(window) if window and window.isdigit() else None,
        )

    def encode(self, texts: Sequence[str], length: int | None = None) -> np.ndarray:
        """Token ids ``[len(texts), T]``: last ``window`` tokens, left-padded to a common T."""
        rows = [
            [self.index.get(tok, self.unk_id) for tok in self.pattern.findall(text.lower())]
            for text in texts
        ]
        limit = length or self.window
        if limit:
            rows = [row[-limit:] for row in rows]
        width = length or max((len(row) for row in rows), default=0)
        out = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            if row:
                out[i, width - len(row) :] = row
        return out
