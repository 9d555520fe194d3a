"""Write docs/protocol.md, the table of every metadata op, from the op registry.

    python scripts/gen_protocol.py           # rewrite the file
    python scripts/gen_protocol.py --check   # exit 1 if it is out of date

tests/unit/meta/test_protocol.py runs the check.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dfs.meta.ops import protocol_markdown  # noqa: E402

TARGET = ROOT / "docs" / "protocol.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/protocol.md is out of date")
    a = ap.parse_args()
    text = protocol_markdown()
    if a.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/gen_protocol.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
