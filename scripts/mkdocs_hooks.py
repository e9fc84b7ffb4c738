"""MkDocs hook: every ``benchmarks/results/*.md`` file becomes a page under ``results/`` at build time (never a copy
in ``docs/``, so it cannot go stale), with an index naming each file and the command that wrote it."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def result_pages() -> dict[str, str]:
    """``results/<name>.md`` → its text, plus ``results/index.md`` listing them with their first heading."""
    pages = {f"results/{p.name}": p.read_text() for p in sorted(RESULTS.glob("*.md"))}
    lines = [
        "# Results files",
        "",
        "Written by the scripts of `benchmarks/` (each file names its command, machine and date); published here "
        "as they are in the repository.",
        "",
    ]
    for name, text in pages.items():
        title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), name)
        lines.append(f"- [{title}]({Path(name).name})")
    return {"results/index.md": "\n".join(lines) + "\n", **pages}


def on_config(config):
    """The results files join the nav under Results, after its index."""
    for item in config.nav:
        if isinstance(item, dict) and "Results" in item:
            item["Results"] += [name for name in result_pages() if name != "results/index.md"]
    return config


def on_files(files: Files, config) -> Files:
    for name, text in result_pages().items():
        files.append(File.generated(config, name, content=text))
    return files
