"""Reverse-image-retrieval augmented answering (RIR; "Reverse Image Retrieval Cues Parametric
Memory in Multimodal LLMs", 2024): before answering a question about an image, find similar
images and give the answerer what is known about them.

Python API::

    from mmrag.tasks.rir import answer_question
    a = answer_question("scan.jpg", "Is there a pneumothorax?", index="vqa_rad_index",
                        k=5, rir=True, answerer="knn")       # or answerer="local" / "openai"
    a.answer                 # "no"
    a.evidence               # [Evidence(id, similarity, texts=["Q: ... A: ..."], path), ...]
    a.to_dict()              # JSON-friendly: question, answer, rir, answerer, evidence, cues,
                             # details (knn votes / generator prompt), seconds

    # Reusable form (one loaded encoder and QA bank for many questions):
    from mmrag.tasks.rir import RIRPipeline, create_provider
    pipe = RIRPipeline(create_provider("index", index_dir="vqa_rad_index"), answerer="knn", k=5)
    pipe.ask("scan.jpg", "Is there a pneumothorax?", rir=False)          # the no-RIR baseline
    pipe.ask("scan.jpg", "...", exclude_same_image=True)                 # neighbours = other images

Parts (one module each): ``providers`` (reverse image search: ``index`` default, ``web`` slot),
``knowledge`` (the QA pairs of an index with question vectors; :func:`index_vqa`), ``cues`` (the
cue block), ``answerers`` (``knn`` vote, ``generator`` over any shared generator), ``pipeline``,
``normalize`` (answer normalisation and the two metrics), ``evaluate`` (with/without RIR
evaluation, bootstrap intervals, ``run_eval`` behind ``mmrag eval ask``). Command line: ``mmrag ask``,
``mmrag eval ask`` (:mod:`mmrag.cli.ask`). The VQA dataset readers (VQA-RAD, JSONL) live in
:mod:`mmrag.corpus.vqa_rad` and are re-exported here.

An index for RIR answering is a normal mmrag index whose image metadata carries ``qa`` pairs
(``[{question, answer, answer_type, question_type}]``); :func:`index_vqa` builds one from a VQA
dataset. Any index works with generator answerers (captions are shown as cues).
"""

from mmrag.corpus.vqa_rad import (
    VQADataset,
    VQAQuestion,
    qa_corpus,
    read_vqa,
    read_vqa_jsonl,
    read_vqa_rad,
    split_by_image,
)
from mmrag.tasks.rir.answerers import (
    ANSWERERS,
    Answerer,
    AnswererError,
    AnswerOutput,
    AnswerRequest,
    CaptionAnswerer,
    GeneratorAnswerer,
    KnnAnswerer,
    KnnConfig,
)
from mmrag.tasks.rir.cues import CueBlock, Evidence, build_cue_block
from mmrag.tasks.rir.knowledge import QABank, QAPair, index_vqa
from mmrag.tasks.rir.normalize import answer_in_prediction, closed_form, exact_match, normalize_answer
from mmrag.tasks.rir.pipeline import DEFAULT_K, Answer, RIRPipeline, answer_question, auto_answerer
from mmrag.tasks.rir.providers import (
    PROVIDERS,
    IndexProvider,
    Neighbour,
    ProviderUnavailableError,
    ReverseSearchProvider,
    WebProvider,
    create_provider,
)

__all__ = [
    "ANSWERERS", "Answer", "Answerer", "AnswererError", "AnswerOutput", "AnswerRequest", "CaptionAnswerer", "CueBlock",
    "DEFAULT_K", "Evidence", "GeneratorAnswerer", "IndexProvider", "KnnAnswerer", "KnnConfig", "Neighbour",
    "PROVIDERS", "ProviderUnavailableError", "QABank", "QAPair", "RIRPipeline", "ReverseSearchProvider",
    "VQADataset", "VQAQuestion", "WebProvider", "answer_in_prediction", "answer_question", "auto_answerer", "build_cue_block",
    "closed_form", "create_provider", "exact_match", "index_vqa", "normalize_answer", "qa_corpus", "read_vqa",
    "read_vqa_jsonl", "read_vqa_rad", "split_by_image",
]
