#!/usr/bin/env python3
"""The house rules for the crates a newcomer reads first (picker-core, filter, host-sim):
no source file over 800 lines and no function over 120 lines, tests aside; and no module
import loops inside a crate. And for the whole repository: no pointer to a document outside it
(the repository stands alone; `docs/` and public sources are cited instead).

    python3 tools/house-rules.py            # prints offenders, exits 1 if any

Source files are read as rustfmt leaves them: a function starts at a line whose first token is
`fn` (after `pub`, `const`, `async`, `unsafe`, `extern "C"`) and ends at the first line at the
same indentation that starts with `}`. Test code is left out: files named `*_tests.rs`, files
under `tests/`, and everything from a `#[cfg(test)]` line to the end of its item.
"""
import os
import re
import subprocess
import sys

CRATES = ["picker-core", "filter", "host-sim"]
MAX_FILE = 800
MAX_FN = 120
FN = re.compile(r'^(\s*)(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern "C")\s+)*fn\s+(\w+)')
USE = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?use\s+(crate|super)::(\w+)')


def source_files(crate):
    root = os.path.join(crate, "src")
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".rs") and not f.endswith("_tests.rs"):
                yield os.path.join(d, f)


def strip_tests(lines):
    """The lines before each `#[cfg(test)]` item, the test items replaced by nothing."""
    out, skip_indent = [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if skip_indent is None and line.strip() == "#[cfg(test)]":
            skip_indent = len(line) - len(line.lstrip())
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            # `#[cfg(test)] mod tests;` (an outlined file) is one line.
            if nxt.rstrip().endswith(";"):
                i += 2
                skip_indent = None
                continue
            i += 1
            continue
        if skip_indent is not None:
            if line.startswith(" " * skip_indent + "}") and len(line) - len(line.lstrip()) == skip_indent:
                skip_indent = None
            i += 1
            continue
        out.append(line)
        i += 1
    return out


def long_functions(lines):
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}") and not lines[j].startswith(indent + " "):
                if j - i + 1 > MAX_FN:
                    yield m.group(6), i + 1, j - i + 1
                break


def module_of(path, crate):
    rel = os.path.relpath(path, os.path.join(crate, "src"))[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts[0] if parts else ""


def import_loops(crate):
    """Top-level modules that import each other through `use crate::…` (directly)."""
    edges = {}
    for path in source_files(crate):
        src = module_of(path, crate)
        if not src:
            continue
        with open(path, encoding="utf-8") as f:
            for line in strip_tests(f.read().split("\n")):
                m = USE.match(line)
                if m and m.group(3) == "crate" and m.group(4) != src:
                    edges.setdefault(src, set()).add(m.group(4))
    for a, targets in edges.items():
        for b in targets:
            if a < b and a in edges.get(b, set()):
                yield a, b


# Documents that live outside the repository (a clone has none of them).
OUTSIDE = re.compile(r"\.\./shared|shared/reference|shared/DESIGN|(?<![\w/-])(proxywasm|calibration|baselines)\.md")


def outside_pointers():
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    for path in files:
        if path == "tools/house-rules.py" or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if OUTSIDE.search(line):
                        yield f"{path}:{n}: points outside the repository: {line.strip()[:100]}"
        except UnicodeDecodeError:
            continue


def main():
    bad = list(outside_pointers())
    for crate in CRATES:
        for path in sorted(source_files(crate)):
            with open(path, encoding="utf-8") as f:
                lines = strip_tests(f.read().split("\n"))
            if len(lines) > MAX_FILE:
                bad.append(f"{path}: {len(lines)} lines (limit {MAX_FILE}, tests aside)")
            for name, at, n in long_functions(lines):
                bad.append(f"{path}:{at}: fn {name} is {n} lines (limit {MAX_FN})")
        for a, b in import_loops(crate):
            bad.append(f"{crate}: modules {a} and {b} import each other")
    for b in bad:
        print(b)
    print(f"house rules: {len(bad)} offence(s) in {', '.join(CRATES)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
