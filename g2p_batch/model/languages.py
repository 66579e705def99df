"""Language codes: the CharsiuG2P list the models know, and files of codes users pass."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

__all__ = ["LANG_LIST", "model_languages", "read_lang_list"]

LANG_LIST = Path(__file__).parents[1] / "data" / "lang_list.txt"  # the 100 codes of the `<lang>:` prefix


def read_lang_list(path: str | Path, key: str = "known_langs") -> list[str]:
    """Codes, one per line or whitespace-separated; '#' starts a comment. Sorted, unique."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r} ({exc}); give a file of language "
                          "codes, one per line") from exc
    codes = {tok for line in text.splitlines() for tok in line.split("#", 1)[0].split()}
    if not codes:
        raise ConfigError(f"{key}: {str(path)!r} holds no language codes")
    return sorted(codes)


def model_languages() -> list[str]:
    return read_lang_list(LANG_LIST, "the model's language list")
