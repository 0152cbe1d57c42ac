from mmrag.corpus.images import IMAGE_SUFFIXES, open_image
from mmrag.corpus.items import Corpus, CorpusItem, Skipped

__all__ = ["Corpus", "CorpusItem", "Skipped", "open_image", "IMAGE_SUFFIXES"]

from mmrag.corpus.readers import READERS, read_corpus  # noqa: E402

__all__ += ["READERS", "read_corpus"]

# registers the ``vqa-rad`` corpus kind (radiology images captioned by their QA pairs)
import mmrag.corpus.vqa_rad  # noqa: E402,F401
