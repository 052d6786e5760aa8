"""Per-step attention metadata from the scheduled rows (engine/layers/attention.py's build, the
backends of engine/layers/attention_backend.py). That the C++ and torch backends compute the same
tokens over such steps is tests/engine/test_cpu_kernels.py's."""
import torch

from engine.layers.attention import AttentionMetadata, AttentionRow, decodes_first
from engine.layers.attention_backend import CpuStackBackend, TorchBackend


def test_decodes_are_laid_out_first_in_their_order():
    assert decodes_first([5, 1, 3, 1]) == [1, 3, 0, 2]


def test_rows_become_slots_decode_tables_and_prefill_chunks():
    rows = [AttentionRow(20, 1, [7, 3, 8]), AttentionRow(3, 1, [5]), AttentionRow(16, 8, [2, 9, 4])]
    meta = AttentionMetadata.build(rows, block_size=16, device=torch.device("cpu"))
    # position 20 → block 3, offset 4; position 3 → block 5, offset 3; positions 16..23 → block 9
    assert meta.slot_mapping.tolist() == [3 * 16 + 4, 5 * 16 + 3] + [9 * 16 + i for i in range(8)]
    assert meta.num_decode_tokens == 2 and meta.decode_max_context_len == 21
    assert meta.decode_block_tables.tolist() == [[7, 3], [5, 0]]  # the blocks in use, padded with 0
    assert meta.decode_context_lens.tolist() == [21, 4]
    [(start, num_new, num_context, table)] = meta.prefills
    assert (start, num_new, num_context, table.tolist()) == (2, 8, 24, [2, 9])


def test_only_the_torch_backend_builds_masks():
    rows = [AttentionRow(20, 1, [7, 3]), AttentionRow(16, 8, [2, 9])]
    torch_meta = TorchBackend(None, torch.device("cpu")).build_metadata(rows, 16)
    cpp_meta = CpuStackBackend(None, stack=None).build_metadata(rows, 16)
    assert torch_meta.decode_mask.shape == (1, 1, 1, 32) and torch_meta.decode_mask.sum() == 21
    assert torch_meta.prefill_masks[0].shape == (8, 24)  # 16 cached keys before the chunk's own 8
    assert cpp_meta.decode_mask is None and cpp_meta.prefill_masks is None  # the C++ kernels mask by position
    assert torch.equal(torch_meta.slot_mapping, cpp_meta.slot_mapping)
