"""A real, reproducible text corpus: first paragraphs of the standard library's docstrings.

A fixed list of stdlib modules that are safe to import (no GUI, no network, no output on
import) is walked in a fixed order: the module's docstring, then every public class and
function it defines (sorted by name), then each class's public methods (sorted by name).
Of each docstring the first paragraph is kept, whitespace-normalised; signature lines
("sorted(iterable, /, *, key=None)"), very short or very long paragraphs are dropped, and
duplicates are removed. `stdlib_sentences(n)` then takes a fixed selection of n of them,
ordered by a hash of the text, so the result is the same on every run of the same Python
version (the docstrings themselves change a little between Python versions).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
import warnings

# Modules rich in prose docstrings, importable everywhere without side effects.
MODULES = (
    "abc", "argparse", "array", "asyncio", "base64", "bisect", "calendar", "cmath",
    "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.message",
    "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http.client", "http.cookiejar", "imaplib", "importlib", "inspect", "io", "ipaddress",
    "itertools", "json", "locale", "logging", "logging.handlers", "lzma", "mailbox", "math",
    "mimetypes", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri",
    "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal",
    "smtplib", "socket", "socketserver", "sqlite3", "statistics", "string", "struct",
    "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)

MIN_CHARS, MAX_CHARS, MIN_WORDS = 40, 300, 6
DEFAULT_SIZE = 900
# "name(arg, ...)" or "name(...) -> type" lines that C functions put before their prose
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*[\w.\[\], ]+)?$")


def first_paragraph(doc: str | None) -> str | None:
    """The first prose paragraph of a docstring, whitespace-normalised (None if none)."""
    if not doc:
        return None
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        lines = [ln for ln in lines if ln and not _SIGNATURE.match(ln)]
        if lines:
            return " ".join(" ".join(lines).split())
    return None


def _keep(text: str | None) -> bool:
    return (text is not None and MIN_CHARS <= len(text) <= MAX_CHARS
            and len(text.split()) >= MIN_WORDS and text.isascii()
            and not text.startswith((">>>", "..", "-", "*", "|")))


def _docstrings(module_name: str) -> list[str | None]:
    with warnings.catch_warnings():      # typing.io / typing.re warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(_walk(importlib.import_module(module_name)))


def _walk(mod):
    """Docstrings of a module, its public classes and functions, and their methods."""
    yield mod.__doc__
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj):
            yield obj.__doc__
            for mname, member in sorted(vars(obj).items()):
                if not mname.startswith("_") and (inspect.isfunction(member)
                                                   or inspect.ismethoddescriptor(member)):
                    yield getattr(member, "__doc__", None)
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield obj.__doc__


@functools.lru_cache(maxsize=1)
def all_paragraphs() -> tuple[str, ...]:
    """Every distinct kept first paragraph, in walk order."""
    seen: dict[str, None] = {}
    for module_name in MODULES:
        try:
            docs = _docstrings(module_name)
        except ImportError:          # a module left out of this Python build (e.g. lzma)
            continue
        for doc in docs:
            text = first_paragraph(doc)
            if _keep(text) and text not in seen:
                seen[text] = None
    return tuple(seen)


def stdlib_sentences(n: int = DEFAULT_SIZE) -> list[str]:
    """A fixed selection of `n` distinct first paragraphs (hash order: deterministic and
    spread over all modules rather than the first few)."""
    paras = all_paragraphs()
    if n > len(paras):
        raise ValueError(f"only {len(paras)} distinct docstring paragraphs, asked for {n}")
    ranked = sorted(paras, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    return ranked[:n]


def calibration_sentences(n: int = 256, corpus_size: int = DEFAULT_SIZE) -> list[str]:
    """`n` paragraphs that are NOT in `stdlib_sentences(corpus_size)`: calibration data for
    data-aware methods, so the corpus the quality is measured on stays held out."""
    paras = all_paragraphs()
    ranked = sorted(paras, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    rest = ranked[corpus_size:]
    if n > len(rest):
        raise ValueError(f"only {len(rest)} paragraphs outside the corpus, asked for {n}")
    return rest[:n]


def _later_paragraphs(doc: str | None) -> list[str]:
    """The prose paragraphs after the first one, normalised like first_paragraph."""
    if not doc:
        return []
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc))[1:]:
        lines = [ln.strip() for ln in para.strip().splitlines()]
        text = " ".join(" ".join(ln for ln in lines if ln and not _SIGNATURE.match(ln)).split())
        if text:
            out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def training_paragraphs(corpus_size: int = DEFAULT_SIZE) -> tuple[str, ...]:
    """Unlabelled training text for distillation: the first paragraphs outside the corpus
    (calibration_sentences) plus every later paragraph of the same docstrings, none of them
    a corpus sentence, so quality stays measured on held-out text."""
    corpus = set(stdlib_sentences(corpus_size))
    seen: dict[str, None] = dict.fromkeys(calibration_sentences(len(all_paragraphs()) - corpus_size,
                                                                corpus_size))
    for module_name in MODULES:
        try:
            docs = _docstrings(module_name)
        except ImportError:
            continue
        for doc in docs:
            for text in _later_paragraphs(doc):
                if _keep(text) and text not in corpus:
                    seen.setdefault(text, None)
    return tuple(seen)
