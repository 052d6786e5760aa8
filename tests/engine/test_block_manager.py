from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def make_seq(seq_id, tokens):
    return Sequence(seq_id, f"r{seq_id}", 0, tokens, SamplingParams(), 16)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(0, list(range(10)))
    assert bm.can_allocate(seq, [], 10)
    bm.allocate(seq, [], 10)
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []


def test_cannot_allocate_past_the_pool():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(0, list(range(9)))
    assert not bm.can_allocate(seq, [], 9)
    assert bm.can_allocate(seq, [], 8)


def test_prefix_cache_reuses_full_blocks_and_leaves_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq(0, list(range(12)))
    bm.allocate(first, [], 12)
    first.num_computed_tokens = 12
    bm.cache_full_blocks(first)
    # Same 12 tokens: only 2 blocks may hit, since the last token must be computed again.
    second = make_seq(1, list(range(12)))
    hits = bm.lookup_prefix(second)
    assert hits == first.block_table[:2]
    # A different second block stops the chain.
    third = make_seq(2, list(range(4)) + [99] * 8)
    assert bm.lookup_prefix(third) == first.block_table[:1]


def test_freed_cached_blocks_are_revived_then_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq(0, [1, 2, 3, 4, 5])
    bm.allocate(a, [], 5)
    a.num_computed_tokens = 5
    bm.cache_full_blocks(a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = make_seq(1, [1, 2, 3, 4, 9])
    hits = bm.lookup_prefix(b)
    assert len(hits) == 2
    assert bm.can_allocate(b, hits, 1)
    bm.allocate(b, hits, 1)
    assert b.num_computed_tokens == 4 and b.num_cached_tokens == 4
    assert bm.num_free_blocks == 1
    # Filling the pool evicts the remaining cached block's hash.
    c = make_seq(2, [7, 7])
    bm.allocate(c, [], 2)
    assert bm.num_free_blocks == 0


def test_fork_shares_blocks_and_copies_on_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = make_seq(0, list(range(6)))
    bm.allocate(parent, [], 6)
    parent.num_computed_tokens = 6
    child = make_seq(1, list(range(6)))
    bm.fork(parent, child)
    child.num_computed_tokens = 6
    assert child.block_table == parent.block_table
    assert bm.num_free_blocks == 6
    # The child's next token lands in the shared partial block: it gets its own copy.
    assert bm.can_allocate(child, [], 1)
    bm.allocate(child, [], 1)
    assert child.block_table[0] == parent.block_table[0]
    assert child.block_table[1] != parent.block_table[1]
    assert bm.pending_copies == [(parent.block_table[1], child.block_table[1])]
    bm.free(child)
    bm.free(parent)
    assert bm.num_free_blocks == 8


def _cached_seq(bm, seq_id, tokens, salt=None):
    seq = Sequence(seq_id, f"r{seq_id}", 0, tokens, SamplingParams(cache_salt=salt), 16)
    bm.allocate(seq, [], len(tokens))
    seq.num_computed_tokens = len(tokens)
    bm.cache_full_blocks(seq)
    return seq


def test_block_hashes_are_sha256_over_parent_tokens_and_salt():
    import hashlib
    from array import array

    bm = BlockManager(num_blocks=8, block_size=4)
    seq = _cached_seq(bm, 0, list(range(9)), salt="tenant-a")

    def expected(parent: bytes, tokens) -> bytes:
        return hashlib.sha256(parent + array("q", tokens).tobytes() + b"tenant-a").digest()

    first = expected(bytes(32), range(4))
    assert seq.block_hashes == [first, expected(first, range(4, 8))]


def test_prefix_cache_is_partitioned_by_salt():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(13))
    owner = _cached_seq(bm, 0, prompt, salt="key-a")
    # the same prompt under another salt (another API key) finds nothing: no "was this seen?"
    assert bm.lookup_prefix(Sequence(1, "r1", 0, prompt, SamplingParams(cache_salt="key-b"), 16)) == []
    assert bm.lookup_prefix(Sequence(2, "r2", 0, prompt, SamplingParams(), 16)) == []
    # the same salt hits as before
    same = Sequence(3, "r3", 0, prompt, SamplingParams(cache_salt="key-a"), 16)
    assert bm.lookup_prefix(same) == owner.block_table[:3]
