"""The packed input layout: every field a kernel reads starts on a 16-byte boundary, whatever
the batch (Triton specialises kernels on pointer alignment; an offset that moved with the
batch shape would compile new variants while serving), and the views round-trip."""
from __future__ import annotations

import random

import numpy as np
import torch

from cormorant.runner.inputs import layout, numpy_views, tensor_views


def test_every_field_is_16_byte_aligned_and_views_agree():
    rng = random.Random(0)
    for _ in range(300):
        tokens, seqs = rng.randint(1, 300), rng.randint(1, 64)
        lay = layout(tokens, seqs, rng.randint(0, seqs), rng.randint(0, seqs), rng.randint(1, 9))
        buf = torch.zeros(lay.nbytes, dtype=torch.uint8)
        host = numpy_views(buf.numpy(), lay)
        for name, view in host.items():
            host[name][...] = np.arange(view.size, dtype=view.dtype).reshape(view.shape) + 7
        views = tensor_views(buf, lay)
        base = buf.data_ptr()
        for name, view in views.items():
            if view.numel():  # an empty view's data_ptr means nothing
                assert (view.data_ptr() - base) % 16 == 0, (name, tokens, seqs)
            assert torch.equal(view, torch.from_numpy(host[name]))
        counts = {"input_ids": tokens, "query_start_loc": seqs + 1, "seq_lens": seqs}
        for name, count in counts.items():
            assert views[name].numel() == count
        assert views["block_tables"].shape == (lay.table_rows, lay.table_width)
        assert lay.nbytes == lay.head_bytes + 4 * lay.table_rows * lay.table_width
        if lay.table_rows:
            assert views["block_tables"].data_ptr() - base == lay.head_bytes
