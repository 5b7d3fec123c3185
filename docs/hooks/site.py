"""MkDocs hooks of the documentation site (mkdocs.yml, `hooks:`).

The benchmark tables have one home, `BENCHMARKS.md` at the repository root (assembled by
`python -m benchmarks.report`), and their plots live beside the tables that made them in
`benchmarks/results/`. The site serves both as they are: `benchmark-tables.md` is
`BENCHMARKS.md` itself, and every published plot is added to the site at its repository
path (`benchmarks/results/...`), where the page's links point.
"""

import os

from mkdocs.structure.files import File

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
TABLES_PAGE = "benchmark-tables.md"


def _tables_markdown():
    with open(os.path.join(ROOT, "BENCHMARKS.md"), encoding="utf-8") as f:
        return f.read()


def on_files(files, config):
    """Adds the tables page and the published plots (`benchmarks/results/**/*.png`), at
    their repository paths: the pages link them as `benchmarks/results/...`."""
    files.append(
        File.generated(config, TABLES_PAGE, content=_tables_markdown())
    )
    results = os.path.join(ROOT, "benchmarks", "results")
    for folder, _, names in sorted(os.walk(results)):
        for name in sorted(names):
            if name.endswith(".png"):
                path = os.path.join(folder, name)
                files.append(
                    File.generated(
                        config,
                        os.path.relpath(path, ROOT).replace(os.sep, "/"),
                        abs_src_path=path,
                    )
                )
    return files
