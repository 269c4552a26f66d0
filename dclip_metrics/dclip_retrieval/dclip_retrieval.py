"""DCLIP retrieval metrics as a Hugging Face `evaluate` module.

Load it offline from the repository (or a copy of this folder) with::

    import evaluate
    metric = evaluate.load("dclip_metrics/dclip_retrieval")
    results = metric.compute(text_embeds=text_embeds, text_to_image=text_to_image, image_embeds=image_embeds)

`text_embeds` / `text_to_image` are the per-caption inputs (they can also be streamed with `add_batch`);
`image_embeds` (all images, `[n_images, dim]`) and the options `ks`, `chunk_size`, `tie_tolerance` go to `compute`.
The numbers are those of `training.metrics.retrieval_metrics`: `retrieval_core.py` next to this file is a symlink to
`training/metrics.py` (one home for the metric); `evaluate.load` copies the file's content, so the loaded module works
without the `dclip` package.
"""

import datasets
import evaluate
import numpy as np

from .retrieval_core import DEFAULT_CHUNK_SIZE, DEFAULT_TIE_TOLERANCE, retrieval_metrics

_DESCRIPTION = """
Image-text retrieval metrics on the standard protocol (Karpathy test splits of COCO / Flickr30k): text-to-image and
image-to-text Recall@K, MRR (the DCLIP paper's "MAP"), true mean average precision, median and mean rank. Images may
have any number of captions (an image with none is a text-to-image distractor, not an image-to-text query). Ties rank
the relevant item after the irrelevant ones it ties with. Memory is bounded by `chunk_size`, not by
n_texts x n_images.
"""

_KWARGS_DESCRIPTION = """
Args:
    text_embeds (`list` of float vectors): one embedding per caption.
    text_to_image (`list` of int): index (into `image_embeds`) of the image each caption describes.
    image_embeds (`array` [n_images, dim]): every image embedding (a `compute` keyword argument).
    ks (`tuple` of int, default (1, 5, 10)): Recall@K cut-offs.
    chunk_size (`int`): side of one score block.
    tie_tolerance (`float`): scores closer than this are ties.
Returns:
    t2i_recall@K, i2t_recall@K, t2i_mrr, i2t_mrr, t2i_map, i2t_map (in %), t2i/i2t_median_rank, t2i/i2t_mean_rank.
Examples:
    >>> metric = evaluate.load("dclip_metrics/dclip_retrieval")
    >>> out = metric.compute(text_embeds=[[1.0, 0.0], [0.0, 1.0]], text_to_image=[0, 1],
    ...                      image_embeds=[[1.0, 0.0], [0.0, 1.0]])
    >>> out["t2i_recall@1"]
    100.0
"""

_CITATION = """
@article{csizmadia2025dclip,
  title={Distill CLIP (DCLIP): Enhancing Image-Text Retrieval via Cross-Modal Transformer Distillation},
  author={Csizmadia, Daniel and others},
  journal={arXiv preprint arXiv:2505.21549},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DclipRetrieval(evaluate.Metric):
    """Text-to-image and image-to-text retrieval metrics of DCLIP (identical to `training.metrics`)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"text_embeds": datasets.Sequence(datasets.Value("float32")), "text_to_image": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2505.21549"],
        )

    def _compute(
        self,
        text_embeds,
        text_to_image,
        image_embeds=None,
        ks=(1, 5, 10),
        chunk_size=DEFAULT_CHUNK_SIZE,
        tie_tolerance=DEFAULT_TIE_TOLERANCE,
    ):
        if image_embeds is None:
            raise ValueError("Pass image_embeds=[n_images, dim] to compute(); the captions are the streamed inputs.")
        return retrieval_metrics(
            np.asarray(image_embeds, dtype=np.float32),
            np.asarray(text_embeds, dtype=np.float32),
            np.asarray(text_to_image, dtype=np.int64),
            ks=tuple(ks),
            chunk_size=int(chunk_size),
            tie_tolerance=float(tie_tolerance),
        )
