"""Extra dev-only captioning variants (Flickr8k dev, datastore = train captions), beyond the grid
of ``bench_caption.py`` (run that first: it caches the dev image vectors).

    python benchmarks/sweep_caption_dev.py 100 "60:document_frequency=candidates" "60:top_m=20" \
        "60:alpha=1" "60:weighted=1"

Each argument is ``K[:option=value,...]`` for the ``consensus`` generator (similarity defaults to
cider with datastore document frequencies). Prints dev BLEU-4, CIDEr-D and retrieve+consensus
seconds per image, and writes them to ``benchmarks/results/caption_sweep_dev.json``. Never touches test.
"""
import argparse
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from common import ROOT, write_results  # noqa: E402
from mmrag.corpus.readers import read_corpus
from mmrag.encoders import create_encoder
from mmrag.tasks.captioning import CaptionDatastore, MRagCaptioner, evaluate_captioner
from mmrag.retrieval import corpus_image_vectors
# parsed before the (slow) model and data loading, so that --help answers at once
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("specs", nargs="+", metavar="K[:option=value,...]")
specs = ap.parse_args().specs
enc = create_encoder("effnet-minilm")
D = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/flickr8k")
train = read_corpus("flickr8k", D, split="train")
dev = read_corpus("flickr8k", D, split="dev")
ds = CaptionDatastore.from_corpus(train, enc, split="train")
dv = corpus_image_vectors(enc, dev)
rows = []
for spec in specs:
    k, opts = spec.split(":", 1) if ":" in spec else (spec, "")
    o = dict(kv.split("=") for kv in opts.split(",") if kv)
    for key in ("alpha",): 
        if key in o: o[key] = float(o[key])
    if "top_m" in o: o["top_m"] = int(o["top_m"])
    if "weighted" in o: o["weighted"] = o["weighted"] == "1"
    cap = MRagCaptioner(enc, ds, "consensus", k=int(k), generator_options=o)
    r = evaluate_captioner(cap, dev, vectors=dv, metrics=["BLEU", "CIDEr"])
    print(f"{spec:45s} B4 {r['BLEU-4']:5.1f} C {r['CIDEr-D']:5.1f} t {r['seconds_per_image_retrieve_generate']:.4f}", flush=True)
    rows.append({"spec": spec, "k": int(k), "options": o, "BLEU-4": r["BLEU-4"], "CIDEr-D": r["CIDEr-D"],
                 "s_per_image": r["seconds_per_image_retrieve_generate"]})
write_results(ROOT / "benchmarks" / "results" / "caption_sweep_dev.json",
              {"dataset": "flickr8k", "split": "dev", "encoder": enc.fingerprint(), "rows": rows})
