"""How a row's word becomes what the model reads, as the model was trained: ByT5 reads bytes,
so the same word in another Unicode form or case is another input.

- composed (NFC) where the word carries decomposed marks: macOS file names and some
  dictionaries carry NFD, which turns Vietnamese or Korean into other byte sequences. Words
  with none keep forms NFC would replace (CJK compatibility ideographs, as in the training
  words), and languages whose training words are not NFC are fed as written (grc: 12% of its
  words spell accents with combining marks; composing them measured PER 0.296 -> 0.314);
- lowercase where the language's training words were all lowercase (`--keep-case` turns it off);
- CharsiuG2P transcribes single words: an entry is split on whitespace, and on hyphens, unless
  the language's training words held them; the parts' phonemes are joined with a space;
- a user's lexicon wins: a (lang, normalised word) it holds never reaches the model.

The per-language facts come from the checkpoint's metadata, else from the CharsiuG2P training
split the released models were trained on (`data/charsiu_input_rules.json`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = ["CHARSIU_RULES", "InputRules", "LanguageRules", "charsiu_rules", "composed"]

CHARSIU_RULES = Path(__file__).parents[1] / "data" / "charsiu_input_rules.json"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class LanguageRules:
    """What a language's training words looked like. Unknown languages: case kept, hyphens
    kept, split on whitespace."""

    lowercase: bool = False  # every training word was lowercase: lowercase the input
    nfc: bool = True         # the training words were NFC (99% or more): compose decomposed input
    hyphens: bool = True     # training words held hyphens: keep them in one input
    spaces: bool = False     # training words held spaces (Vietnamese syllables): keep them

    @classmethod
    def of_words(cls, words) -> "LanguageRules":
        words = [w for w in words if w]
        nfc = sum(w == unicodedata.normalize("NFC", w) for w in words) >= 0.99 * len(words)
        return cls(lowercase=all(w == w.lower() for w in words), nfc=nfc, hyphens=any("-" in w for w in words),
                   spaces=any(" " in w.strip() for w in words))


@dataclass
class InputRules:
    languages: dict[str, LanguageRules] = field(default_factory=dict)
    keep_case: bool = False
    lexicon: Mapping[tuple[str, str], str] | None = None   # (lang, normalised word) -> pron

    @classmethod
    def from_dict(cls, table: dict | None, keep_case: bool = False) -> "InputRules":
        return cls({k: LanguageRules(**v) for k, v in (table or {}).items()}, keep_case)

    def normalise(self, lang: str, word: str) -> str:
        rules = self.languages.get(lang, LanguageRules())
        if rules.nfc:
            word = composed(word)
        if not self.keep_case and rules.lowercase:
            word = word.lower()
        return word

    def parts(self, lang: str, word: str) -> list[str]:
        """The normalised word's parts: one, unless it is several words for this language."""
        rules = self.languages.get(lang, LanguageRules())
        pieces = [word] if rules.spaces else _SPACES.split(word.strip())
        if not rules.hyphens:
            pieces = [p for piece in pieces for p in piece.split("-")]
        pieces = [p for p in pieces if p]
        return pieces or [word]

    def with_lexicon(self, entries) -> "InputRules":
        """These rules plus a lexicon of (lang, word, pron) entries, keyed by normalised word;
        a later entry wins over an earlier one."""
        self.lexicon = {(lang, self.normalise(lang, word)): pron for lang, word, pron in entries}
        return self


def composed(word: str) -> str:
    """NFC if the word holds a combining mark or a conjoining Hangul jamo, else the word as it is."""
    if word.isascii() or not any(unicodedata.combining(c) or "\u1100" <= c <= "\u11ff" for c in word):
        return word
    return unicodedata.normalize("NFC", word)


def charsiu_rules() -> dict:
    """The per-language rules of the CharsiuG2P training split, as a metadata dict."""
    return json.loads(CHARSIU_RULES.read_text(encoding="utf-8"))
