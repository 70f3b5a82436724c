"""Which files `files` entries and repo trees ship: gitignore rules as ripgrep applies them.

dstack packs with the `ignore` crate (ripgrep's walker) configured so that `.gitignore` counts
even outside a git repo, `.dstackignore` is an extra ignore file, hidden files are included and
`.git` is left out. This module reproduces that walk without a third-party matcher:

- the gitignore grammar: `*`, `?`, `[...]`, `**`, a leading or middle `/` anchors a pattern to
  its file's directory, a trailing `/` matches directories only, `!` re-includes, `\\` escapes,
  `#` comments, trailing spaces trimmed unless escaped;
- an ignore file applies to its directory and everything below it; ignore files in the
  ancestors of the walked root apply as well, up to the filesystem root;
- for one path, the innermost directory with a matching pattern decides, and within one file
  the last matching pattern wins; `.dstackignore` outranks `.gitignore`, which outranks
  `.git/info/exclude`;
- like git, `.gitignore` files above the first directory that holds a `.git` do not apply
  (a repo is not governed by the ignore files of the folders it happens to sit in), while
  `.dstackignore` files apply all the way up;
- an ignored directory is not entered, so nothing below it can be re-included (git's rule).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

GITIGNORE = ".gitignore"
DSTACKIGNORE = ".dstackignore"
IGNORE_FILES: Tuple[str, ...] = (GITIGNORE, DSTACKIGNORE)
"""The ignore files dstack honours; a later name outranks an earlier one."""

_GIT_DIR = ".git"


@dataclass(frozen=True)
class _Pattern:
    regex: "re.Pattern[str]"
    negated: bool
    dir_only: bool


# One character of a pattern line and whether it was written with a backslash before it.
_Token = Tuple[str, bool]


def _tokenize(line: str) -> Optional[List[_Token]]:
    tokens: List[_Token] = []
    chars = iter(line)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                return None  # a trailing backslash: git never matches such a pattern
            tokens.append((escaped, True))
        else:
            tokens.append((char, False))
    return tokens


def _is(token: _Token, char: str) -> bool:
    return token == (char, False)


_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": "\\s",
    "upper": "A-Z",
    "xdigit": "0-9a-fA-F",
}


def _posix_class(tokens: List[_Token], start: int) -> Tuple[Optional[str], int]:
    """`[:name:]` inside a bracket, its name starting at `tokens[start]`."""
    name = ""
    i = start
    while i + 1 < len(tokens) and not (_is(tokens[i], ":") and _is(tokens[i + 1], "]")):
        name += tokens[i][0]
        i += 1
    if i + 1 >= len(tokens) or name not in _POSIX_CLASSES:
        return None, start
    return _POSIX_CLASSES[name], i + 2


def _translate_bracket(tokens: List[_Token], start: int) -> Tuple[Optional[str], int]:
    """A `[...]` class starting at `tokens[start]`: (regex, index after it), or (None, start)
    when the bracket is not closed and so stands for itself."""
    i = start + 1
    negated = False
    if i < len(tokens) and (_is(tokens[i], "!") or _is(tokens[i], "^")):
        negated = True
        i += 1
    items: List[str] = []
    first = True
    while i < len(tokens):
        char, escaped = tokens[i]
        if char == "]" and not escaped and not first:
            break
        first = False
        if _is(tokens[i], "[") and i + 1 < len(tokens) and _is(tokens[i + 1], ":"):
            name, after = _posix_class(tokens, i + 2)
            if name is not None:
                items.append(name)
                i = after
                continue
        if (
            i + 2 < len(tokens)
            and _is(tokens[i + 1], "-")
            and not _is(tokens[i + 2], "]")
        ):
            low, high = char, tokens[i + 2][0]
            if low <= high:
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
            continue
        items.append(re.escape(char))
        i += 1
    else:
        return None, start
    body = "".join(items)
    # A class never matches the path separator (git's wildmatch with WM_PATHNAME).
    if negated:
        return f"[^/{body}]", i + 1
    if not body:
        return "(?!)", i + 1
    return f"(?!/)[{body}]", i + 1


def _translate_segment(tokens: List[_Token]) -> str:
    out: List[str] = []
    i = 0
    while i < len(tokens):
        char, escaped = tokens[i]
        if escaped:
            out.append(re.escape(char))
        elif char == "*":
            while i + 1 < len(tokens) and _is(tokens[i + 1], "*"):
                i += 1  # `**` inside a name is just `*`
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            regex, after = _translate_bracket(tokens, i)
            if regex is not None:
                out.append(regex)
                i = after
                continue
            out.append(re.escape(char))
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def parse_pattern(line: str) -> Optional[_Pattern]:
    """One line of an ignore file, or None for blank lines, comments and unusable patterns."""
    if not line or line.startswith("#"):
        return None
    tokens = _tokenize(line)
    if tokens is None:
        return None
    while tokens and _is(tokens[-1], " "):
        tokens.pop()
    negated = bool(tokens) and _is(tokens[0], "!")
    if negated:
        tokens = tokens[1:]
    dir_only = bool(tokens) and _is(tokens[-1], "/")
    if dir_only:
        tokens = tokens[:-1]
    if not tokens:
        return None

    segments: List[List[_Token]] = [[]]
    for token in tokens:
        if _is(token, "/"):
            segments.append([])
        else:
            segments[-1].append(token)
    anchored = len(segments) > 1
    if anchored and not segments[0]:
        segments = segments[1:]  # the leading `/` only anchors

    regex: List[str] = [] if anchored else ["(?:.*/)?"]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == [("*", False), ("*", False)]:
            regex.append(".*" if last else "(?:.*/)?")
        else:
            regex.append(_translate_segment(segment))
            if not last:
                regex.append("/")
    compiled = re.compile("".join(regex), re.DOTALL)
    return _Pattern(regex=compiled, negated=negated, dir_only=dir_only)


class IgnoreFile:
    """The patterns of one ignore file, matched against paths relative to its directory."""

    def __init__(self, text: str) -> None:
        self.patterns: List[_Pattern] = [
            pattern for line in text.splitlines() if (pattern := parse_pattern(line)) is not None
        ]

    @classmethod
    def read(cls, path: Path) -> Optional["IgnoreFile"]:
        """None when there is no readable file (a missing ignore file is the common case)."""
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            return None
        ignore_file = cls(text)
        return ignore_file if ignore_file.patterns else None

    def match(self, relative: str, is_dir: bool) -> Optional[bool]:
        """True: ignored, False: re-included by a `!` pattern, None: no pattern matches."""
        for pattern in reversed(self.patterns):
            if pattern.dir_only and not is_dir:
                continue
            if pattern.regex.fullmatch(relative):
                return not pattern.negated
        return None


@dataclass
class _DirRules:
    directory: Path
    has_git: bool
    files: Dict[str, Optional[IgnoreFile]] = field(default_factory=dict)
    git_exclude: Optional[IgnoreFile] = None


class IgnoreFilter:
    """Decides, for paths under `root`, whether the ignore files around them exclude them.

    `names` are the ignore file names to honour; a later name outranks an earlier one. Rules are
    read once per directory.
    """

    def __init__(self, root: Path, names: Sequence[str] = IGNORE_FILES) -> None:
        self.root = Path(os.path.abspath(root))
        self.names = tuple(names)
        self._rules: Dict[Path, _DirRules] = {}

    def _dir_rules(self, directory: Path) -> _DirRules:
        rules = self._rules.get(directory)
        if rules is None:
            git = directory / _GIT_DIR
            rules = _DirRules(directory=directory, has_git=os.path.lexists(git))
            for name in self.names:
                rules.files[name] = IgnoreFile.read(directory / name)
            if rules.has_git and GITIGNORE in self.names:
                rules.git_exclude = IgnoreFile.read(git / "info" / "exclude")
            self._rules[directory] = rules
        return rules

    def _chain(self, directory: Path) -> List[_DirRules]:
        """The rules of `directory` and of each of its ancestors, innermost first."""
        return [self._dir_rules(d) for d in (directory, *directory.parents)]

    def ignored(self, path: Path, is_dir: bool) -> bool:
        """Whether `path` itself is ignored (its parent directories are not looked at)."""
        path = Path(os.path.abspath(path))
        if path.name == _GIT_DIR:
            return True
        decisions: Dict[str, Optional[bool]] = {name: None for name in self.names}
        exclude: Optional[bool] = None
        saw_git = False
        for rules in self._chain(path.parent):
            relative = path.relative_to(rules.directory).as_posix()
            for name in self.names:
                ignore_file = rules.files[name]
                if decisions[name] is not None or ignore_file is None:
                    continue
                if name == GITIGNORE and saw_git:
                    continue
                decisions[name] = ignore_file.match(relative, is_dir)
            if exclude is None and not saw_git and rules.git_exclude is not None:
                exclude = rules.git_exclude.match(relative, is_dir)
            saw_git = saw_git or rules.has_git
        for name in reversed(self.names):
            if decisions[name] is not None:
                return bool(decisions[name])
        return bool(exclude)

    def excluded(self, path: Path) -> bool:
        """Whether the walk from `root` would leave `path` out: it or a directory on the way to it
        is ignored. `path` must be under `root`; the root itself is never excluded."""
        path = Path(os.path.abspath(path))
        parts = path.relative_to(self.root).parts
        current = self.root
        for index, part in enumerate(parts):
            current = current / part
            last = index == len(parts) - 1
            is_dir = (current.is_dir() and not current.is_symlink()) if last else True
            if self.ignored(current, is_dir):
                return True
        return False


def walk(root: Path, names: Sequence[str] = IGNORE_FILES) -> List[Path]:
    """`root` itself and every file, symlink and directory below it that the ignore rules keep,
    sorted so that a directory comes right before its content.

    Symlinks are listed, never followed (a link to a directory is not entered); `.git` is
    always left out, hidden files are kept. The root is kept even if a rule matches it.
    """
    root = Path(os.path.abspath(root))
    rules = IgnoreFilter(root, names)
    found: List[Path] = [root]

    def visit(directory: Path) -> None:
        with os.scandir(directory) as entries:
            children = list(entries)
        for entry in children:
            is_dir = entry.is_dir(follow_symlinks=False)
            path = Path(entry.path)
            if rules.ignored(path, is_dir):
                continue
            found.append(path)
            if is_dir:
                visit(path)

    if root.is_dir():
        visit(root)
    return sorted(found)
