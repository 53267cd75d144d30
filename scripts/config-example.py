#!/usr/bin/env python3
"""Regenerates packaging/ecs.config.example from the settings table in src/config/settings.rs.
A unit test checks that the example lists every key; run this after adding a setting."""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "src/config/settings.rs").read_text()
table = src[src.index("pub static SETTINGS"):]
rows = re.findall(
    r's!\(\s*"([A-Z_0-9]+)",\s*(?:None|Some\("[^"]+"\)),\s*"((?:[^"\\]|\\.)*)",\s*"((?:[^"\\]|\\.)*)"',
    table,
)
out = [
    "# /etc/ecs/ecs.config: every setting ecs-hostd reads, with its default, commented out.",
    "# One KEY=VALUE per line, split at the first '='; values are literal (no quotes).",
    "# Later lines win. ECS_HOSTD_* keys may also go in /etc/ecs-hostd/config.toml.",
]
for key, default, help_text in rows:
    out += ["", f"# {help_text}", f"#{key}={default.replace(chr(92) + chr(34), chr(34))}"]
(root / "packaging/ecs.config.example").write_text("\n".join(out) + "\n")
print(f"{len(rows)} settings written")
