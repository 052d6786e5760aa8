"""Sliding-window attention over the paged cache: the blocks before every window are skipped
(not gathered), and the result equals dense attention with the window mask."""
import torch
import torch.nn.functional as F

from engine.layers.attention import AttentionMetadata, paged_attention

BS, WINDOW, H, D = 4, 6, 2, 8


def dense_reference(q, k, v, q_pos, window):
    # q (n, H, D) at positions q_pos; k, v (L, H, D) at positions 0..L-1
    k_pos = torch.arange(k.shape[0])
    mask = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - window)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def test_window_skips_old_blocks_and_matches_dense_attention():
    torch.manual_seed(0)
    ctx = 50  # one sequence: 49 tokens cached, then one decode; another: a 4-token chunk after 46 cached
    num_blocks = 2 * (-(-ctx // BS))
    cache = torch.zeros(2, num_blocks, BS, H, D)
    k_all, v_all = torch.randn(2, ctx, H, D), torch.randn(2, ctx, H, D)
    tables = [torch.arange(13), torch.arange(13, 26).flip(0)]  # any block order
    for seq in range(2):
        slots = torch.stack([tables[seq][p // BS] * BS + p % BS for p in range(ctx)])
        cache[0].view(-1, H, D)[slots] = k_all[seq]
        cache[1].view(-1, H, D)[slots] = v_all[seq]
    q = torch.randn(5, H, D)  # one decode token (seq 0, position 49), then four prefill tokens (seq 1, 46..49)
    last0 = tables[0][49 // BS] * BS + 49 % BS
    slots = torch.cat([last0[None], torch.stack([tables[1][p // BS] * BS + p % BS for p in range(46, 50)])])
    meta = AttentionMetadata(slot_mapping=slots, num_decode_tokens=1, decode_block_tables=tables[0][None],
                             decode_context_lens=torch.tensor([ctx]), decode_max_context_len=ctx,
                             prefills=[(1, 4, ctx, tables[1])]).finalize(BS, torch.device("cpu"))
    k_new = torch.cat([k_all[0, 49:], k_all[1, 46:]])
    v_new = torch.cat([v_all[0, 49:], v_all[1, 46:]])
    out = paged_attention(q, k_new, v_new, cache, meta, D**-0.5, window=WINDOW)
    view = meta.window_view(WINDOW)
    assert view.decode_block_ids.numel() == (WINDOW - 1) // BS + 2  # 3 of the sequence's 13 blocks
    assert view.prefill_first_blocks == [(ctx - 4 - WINDOW + 1) // BS]  # block 10 of 13
    assert torch.allclose(out[:1], dense_reference(q[:1], k_all[0], v_all[0], torch.tensor([49]), WINDOW), atol=1e-5)
    assert torch.allclose(out[1:], dense_reference(q[1:], k_all[1], v_all[1], torch.arange(46, 50), WINDOW),
                          atol=1e-5)
    full = paged_attention(q, k_new, v_new, cache, meta, D**-0.5)  # no window: every position
    assert not torch.allclose(full, out, atol=1e-3)
