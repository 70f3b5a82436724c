"""The gitignore matcher and the walk that decides what `files` and repo trees ship."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from dstack_ray.exec.ignore import IgnoreFile, IgnoreFilter, parse_pattern, walk


def make(root: Path, files: Dict[str, str]) -> Path:
    """Create `files` (relative path -> content; a trailing `/` makes a directory) under root."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def kept(root: Path) -> List[str]:
    return [path.relative_to(root).as_posix() for path in walk(root) if path != root]


# (pattern, path, is_dir, expected: True ignored / False re-included / None no match)
GRAMMAR = [
    ("*.log", "a.log", False, True),
    ("*.log", "deep/down/a.log", False, True),
    ("*.log", "a.logx", False, None),
    ("*.log", "a.log/x", False, None),
    ("/root.txt", "root.txt", False, True),
    ("/root.txt", "sub/root.txt", False, None),
    ("doc/*.txt", "doc/a.txt", False, True),
    ("doc/*.txt", "doc/x/a.txt", False, None),
    ("doc/*.txt", "x/doc/a.txt", False, None),  # a middle slash anchors too
    ("build/", "build", True, True),
    ("build/", "build", False, None),
    ("build/", "src/build", True, True),
    ("/build/", "src/build", True, None),
    ("**/foo", "foo", False, True),
    ("**/foo", "a/b/foo", False, True),
    ("**/foo/bar", "x/foo/bar", False, True),
    ("foo/**", "foo/a", False, True),
    ("foo/**", "foo/a/b", False, True),
    ("foo/**", "foo", True, None),
    ("a/**/b", "a/b", False, True),
    ("a/**/b", "a/x/b", False, True),
    ("a/**/b", "a/x/y/b", False, True),
    ("a/**/b", "a/xb", False, None),
    ("**", "any/thing", False, True),
    ("a**b", "axyb", False, True),  # `**` inside a name is a plain `*`
    ("a**b", "a/b", False, None),
    ("*", "x/y", False, True),
    ("a*", "a/b", False, None),  # `*` never crosses a slash
    ("?.txt", "a.txt", False, True),
    ("?.txt", "ab.txt", False, None),
    ("a?b", "a/b", False, None),
    ("[abc].txt", "b.txt", False, True),
    ("[abc].txt", "d.txt", False, None),
    ("[!abc].txt", "d.txt", False, True),
    ("[!abc].txt", "a.txt", False, None),
    ("[^abc].txt", "d.txt", False, True),
    ("[a-c]x", "bx", False, True),
    ("[a-c]x", "dx", False, None),
    ("[]]x", "]x", False, True),
    ("a[/]b", "a/b", False, None),
    ("[[:digit:]]*.csv", "7days.csv", False, True),
    ("[[:digit:]]*.csv", "days.csv", False, None),
    ("[abc", "[abc", False, True),  # an unclosed bracket is literal
    ("\\#notes", "#notes", False, True),
    ("\\!bang", "!bang", False, True),
    ("\\*", "*", False, True),
    ("\\*", "x", False, None),
    ("trailing   ", "trailing", False, True),  # trailing spaces are trimmed...
    ("space\\ ", "space ", False, True),  # ...unless escaped
    ("space\\ ", "space", False, None),
    ("a.b", "axb", False, None),  # regex characters are literal
    ("(x)+", "(x)+", False, True),
    ("!keep.log", "keep.log", False, False),
]


@pytest.mark.parametrize("pattern,path,is_dir,expected", GRAMMAR)
def test_grammar(pattern: str, path: str, is_dir: bool, expected: Optional[bool]) -> None:
    assert IgnoreFile(pattern).match(path, is_dir) is expected


@pytest.mark.parametrize("line", ["", "# a comment", "   ", "!", "/", "trailing\\"])
def test_lines_that_match_nothing(line: str) -> None:
    assert parse_pattern(line) is None


def test_last_matching_pattern_wins() -> None:
    rules = IgnoreFile("*.log\n!keep.log\n# c\n\n")
    assert rules.match("a.log", False) is True
    assert rules.match("keep.log", False) is False
    assert IgnoreFile("!keep.log\n*.log").match("keep.log", False) is True


def test_comment_and_hash_escape(tmp_path: Path) -> None:
    make(tmp_path, {".gitignore": "# x.txt\n\\#y\n", "x.txt": "", "#y": "", "# x.txt": ""})
    assert kept(tmp_path) == ["# x.txt", ".gitignore", "x.txt"]


def test_walk_layout_sorted_hidden_and_git(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            "a/b": "",
            "a-c": "",
            ".env": "",
            ".config/x": "",
            ".git/HEAD": "",
            "sub/.git": "gitdir: elsewhere",  # a submodule's .git file
            "sub/f": "",
        },
    )
    assert walk(tmp_path)[0] == tmp_path
    # A directory comes right before its content (Path order, as dstack sorts).
    assert kept(tmp_path) == [".config", ".config/x", ".env", "a", "a/b", "a-c", "sub", "sub/f"]


def test_directories_only_and_anchoring(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "out/\n/top.txt\nlogs/*.log\n",
            "out/x": "",
            "src/out/y": "",
            "notdir/out": "",  # a file named like a dir-only pattern stays
            "top.txt": "",
            "src/top.txt": "",
            "logs/a.log": "",
            "logs/deep/b.log": "",
        },
    )
    assert kept(tmp_path) == [
        ".gitignore",
        "logs",
        "logs/deep",
        "logs/deep/b.log",
        "notdir",
        "notdir/out",
        "src",
        "src/top.txt",
    ]


def test_nested_ignore_file_applies_below_its_directory(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            "a.tmp": "",
            "x": "",
            "sub/.gitignore": "*.tmp\n/x\n",
            "sub/a.tmp": "",
            "sub/x": "",
            "sub/deeper/x": "",
            "sub/deeper/b.tmp": "",
        },
    )
    assert kept(tmp_path) == [
        "a.tmp",
        "sub",
        "sub/.gitignore",
        "sub/deeper",
        "sub/deeper/x",
        "x",
    ]


def test_negation_and_the_innermost_file_wins(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.log\n!important.log\nbuild/\n!build/keep\n",
            "a.log": "",
            "important.log": "",
            "sub/.gitignore": "!keep.log\nimportant.log\n",
            "sub/keep.log": "",
            "sub/important.log": "",
            "sub/other.log": "",
            "build/keep": "",
        },
    )
    # build/keep cannot come back: its directory is never entered (git's rule).
    assert kept(tmp_path) == [
        ".gitignore",
        "important.log",
        "sub",
        "sub/.gitignore",
        "sub/keep.log",
    ]


def test_double_star_in_ignore_file(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "**/cache/**\ndata/**/*.bin\n",
            "cache/a": "",
            "x/cache/b": "",
            "data/a.bin": "",
            "data/1/2/b.bin": "",
            "data/c.txt": "",
        },
    )
    assert kept(tmp_path) == [
        ".gitignore",
        "cache",
        "data",
        "data/1",
        "data/1/2",
        "data/c.txt",
        "x",
        "x/cache",
    ]


def test_dstackignore_is_honoured_and_outranks_gitignore(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.bin\n",
            ".dstackignore": "data/\n!model.bin\n",
            "model.bin": "",
            "other.bin": "",
            "data/x": "",
            "code.py": "",
        },
    )
    assert kept(tmp_path) == [".dstackignore", ".gitignore", "code.py", "model.bin"]


def test_gitignore_counts_outside_a_git_repo(tmp_path: Path) -> None:
    make(tmp_path, {".gitignore": "secret\n", "secret": "", "public": ""})
    assert not (tmp_path / ".git").exists()
    assert kept(tmp_path) == [".gitignore", "public"]


def test_ignore_files_of_ancestors_apply(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.log\n/outer/inner/anchored\n",
            "outer/.dstackignore": "*.ckpt\n",
            "outer/inner/a.log": "",
            "outer/inner/w.ckpt": "",
            "outer/inner/anchored": "",
            "outer/inner/code.py": "",
        },
    )
    assert kept(tmp_path / "outer" / "inner") == ["code.py"]


def test_gitignore_above_a_repo_does_not_apply_but_dstackignore_does(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".gitignore": "*.py\n",
            ".dstackignore": "*.ckpt\n",
            "repo/.git/HEAD": "",
            "repo/.gitignore": "*.log\n",
            "repo/src/a.py": "",
            "repo/src/a.log": "",
            "repo/src/w.ckpt": "",
        },
    )
    assert kept(tmp_path / "repo" / "src") == ["a.py"]


def test_git_info_exclude(tmp_path: Path) -> None:
    make(
        tmp_path,
        {
            ".git/info/exclude": "local-only\n",
            ".gitignore": "!local-only-but-kept\n",
            "local-only": "",
            "local-only-but-kept": "",
            "kept": "",
        },
    )
    assert kept(tmp_path) == [".gitignore", "kept", "local-only-but-kept"]


def test_symlinks_are_listed_not_followed(tmp_path: Path) -> None:
    make(tmp_path / "elsewhere", {"big": ""})
    root = make(tmp_path / "root", {".gitignore": "linkdir/\n", "real/f": ""})
    os.symlink(tmp_path / "elsewhere", root / "linkdir")  # dir-only patterns skip links
    os.symlink("real/f", root / "linkfile")
    assert kept(root) == [".gitignore", "linkdir", "linkfile", "real", "real/f"]


def test_root_is_kept_even_when_a_rule_matches_it(tmp_path: Path) -> None:
    make(tmp_path, {".gitignore": "data\n*.txt\n", "data/a.txt": "", "data/b": "", "one.txt": ""})
    assert kept(tmp_path / "data") == ["b"]
    assert walk(tmp_path / "one.txt") == [tmp_path / "one.txt"]


def test_excluded_looks_at_every_directory_on_the_way(tmp_path: Path) -> None:
    make(tmp_path, {".dstackignore": "skip/\n", "skip/a/b": "", "keep/c": "", "keep/.git/x": ""})
    rules = IgnoreFilter(tmp_path)
    assert rules.excluded(tmp_path / "skip" / "a" / "b")
    assert not rules.excluded(tmp_path / "keep" / "c")
    assert rules.excluded(tmp_path / "keep" / ".git" / "x")
    assert not rules.excluded(tmp_path)


def test_a_name_list_without_gitignore(tmp_path: Path) -> None:
    make(tmp_path, {".gitignore": "a\n", ".dstackignore": "b\n", "a": "", "b": ""})
    assert [p.name for p in walk(tmp_path, names=(".dstackignore",))][1:] == [
        ".dstackignore",
        ".gitignore",
        "a",
    ]
