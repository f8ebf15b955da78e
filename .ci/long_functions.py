#!/usr/bin/env python3
"""List Rust functions whose body is longer than a limit (the team's rule: 80).

Usage: .ci/long_functions.py [--max N] [--check] [DIR ...]
(default dirs: host client plugins). A body's length is the number of lines
strictly between the line of its opening brace and the line of its closing
brace. Comments and string literals are blanked before braces are matched,
so braces inside them do not count. With --check the exit status is 1 when
anything is listed.
"""

import argparse
import pathlib
import re
import sys

FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def blank(src):
    """`src` with comments, strings and char literals replaced by spaces
    (newlines kept, so line numbers stay right)."""
    out = []
    i, n = 0, len(src)

    def keep_newlines(text):
        return "".join("\n" if c == "\n" else " " for c in text)

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(keep_newlines(src[i:j]))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(keep_newlines(src[i:j]))
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(src, i)) and (
            i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")
        ):
            end = src.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(keep_newlines(src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(keep_newlines(src[i : j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}'), else a lifetime ('a).
            m = re.compile(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'").match(src, i)
            j = m.end() if m else i + 1
            out.append(keep_newlines(src[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(src):
    """(name, first line, body lines) of every function with a body."""
    code = blank(src)
    for m in FN.finditer(code):
        depth, j = 0, m.end()
        while j < len(code):
            ch = code[j]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch in "{;":
                break
            j += 1
        if j >= len(code) or code[j] == ";":
            continue  # a declaration without a body
        open_at, level, k = j, 0, j
        while k < len(code):
            if code[k] == "{":
                level += 1
            elif code[k] == "}":
                level -= 1
                if level == 0:
                    break
            k += 1
        first = code.count("\n", 0, m.start()) + 1
        open_line = code.count("\n", 0, open_at)
        close_line = code.count("\n", 0, k)
        yield m.group(1), first, max(0, close_line - open_line - 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=80)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("dirs", nargs="*", default=["host", "client", "plugins"])
    args = ap.parse_args()
    found = []
    for d in args.dirs:
        for path in sorted(pathlib.Path(d).rglob("*.rs")):
            if "target" in path.parts:
                continue
            for name, line, length in functions(path.read_text(errors="replace")):
                if length > args.max:
                    found.append((length, f"{path}:{line}", name))
    for length, where, name in sorted(found, reverse=True):
        print(f"{length:5} {where} {name}")
    if args.check and found:
        sys.exit(1)


if __name__ == "__main__":
    main()
