#!/usr/bin/env python3
"""Import graph of a crate's modules: prints every import circle between
files and every import from a module into one of its ancestors (a child
using what its parent defines). Re-exports (`pub use`) are followed to the
file that defines the item. Usage: scripts/module-graph.py server/src"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "server/src"
files = {}
for directory, _, names in os.walk(root):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)[:-3]
            if rel in ("lib", "main"):
                module = "crate" if rel == "lib" else "main"
            else:
                module = "crate::" + rel.replace("/mod", "").replace("/", "::")
            files[module] = path


def source(module):
    text = open(files[module]).read()
    return re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)


def absolute(module, path):
    parts = path.split("::")
    if parts[0] == "crate":
        return path
    current = module.split("::")
    if files[module].endswith("mod.rs") or module == "crate":
        pass
    if parts[0] == "self":
        return "::".join(current + parts[1:])
    while parts and parts[0] == "super":
        current = current[:-1]
        parts = parts[1:]
    if len(current) == len(module.split("::")) and not path.startswith("super"):
        return None
    return "::".join(current + parts)


def imports(module):
    """(target path, is_reexport) of every `use` in a module."""
    found = []
    for match in re.finditer(r"\b(pub\s+)?use\s+([\w:]+?)(?:::\{([^;]*)\})?;", source(module)):
        public, base, group = match.groups()
        names = [base] if group is None else [
            base + "::" + item.strip().split(" ")[0] for item in group.split(",") if item.strip()
        ]
        for name in names:
            full = absolute(module, name)
            if full and full.startswith("crate"):
                found.append((full, bool(public)))
    return found


def defining(path, seen=()):
    """The module file that defines `path` (following re-exports)."""
    parts = path.split("::")
    for cut in range(len(parts), 0, -1):
        module = "::".join(parts[:cut])
        if module in files:
            rest = parts[cut:]
            if not rest:
                return module
            for target, public in imports(module):
                if public and target.split("::")[-1] == rest[0] and target not in seen:
                    return defining("::".join(target.split("::")[:-1] + rest), seen + (target,))
            return module
    return None


edges = {}
for module in files:
    edges[module] = set()
    for target, _ in imports(module):
        owner = defining(target)
        if owner and owner != module:
            edges[module].add(owner)

circles, state, stack = [], {}, []


def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
        if state.get(nxt) == 1:
            circles.append(stack[stack.index(nxt):] + [nxt])
        elif not state.get(nxt):
            visit(nxt)
    stack.pop()
    state[node] = 2


for node in sorted(edges):
    if not state.get(node):
        visit(node)
upward = sorted((a, b) for a in edges for b in edges[a] if a.startswith(b + "::"))
print(f"{len(files)} modules, {sum(map(len, edges.values()))} imports")
print(f"import circles: {len(circles)}")
for circle in circles:
    print("  " + " -> ".join(circle))
print(f"imports from a module into an ancestor: {len(upward)}")
for a, b in upward:
    print(f"  {a} -> {b}")
sys.exit(1 if circles or upward else 0)
