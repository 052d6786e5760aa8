"""Paged KV blocks: one preallocated pool, a block table per sequence, prefix-cache hashing.

Full blocks are registered under a hash chained over every token before them, so that a new
sequence whose prompt starts with the same tokens reuses them (reference counted). The hash is
SHA-256 over the parent block's hash, the block's token ids and the sequence's cache salt
(``SamplingParams.cache_salt``): sequences with different salts (the server gives each API key
its own) never share a block, so the cache cannot tell one user whether another sent a prompt. Freed
blocks keep their hash until they are handed out again: the free list is the LRU order of
eviction, unhashed blocks first.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None
        self.token_ids: tuple[int, ...] = ()  # kept to rule out hash collisions


def chain_hash(prev_hash: bytes | None, token_ids: tuple[int, ...], salt: bytes = b"") -> bytes:
    """SHA-256 over the parent's hash (32 zero bytes for the first block), the token ids (int64,
    the machine's byte order: hashes never leave the process) and the salt: equal hashes mean
    the same tokens from the start under the same salt."""
    digest = hashlib.sha256(prev_hash or bytes(32))
    digest.update(array("q", token_ids).tobytes())
    digest.update(salt)
    return digest.digest()


def salt_bytes(salt: str | None) -> bytes:
    return salt.encode("utf-8", "surrogatepass") if salt else b""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[bytes, int] = {}
        self.pending_copies: list[tuple[int, int]] = []  # (src, dst) copy-on-write, for the runner
        self.num_prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.num_prefix_hits = 0  # of which found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    # -- prefix cache -------------------------------------------------------------------

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks that hold the start of ``seq`` (no side effects).

        Only for a sequence without blocks. The last token is always left to compute so
        that the step has logits to sample from.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        hits: list[int] = []
        prev: bytes | None = None
        bs = self.block_size
        salt = salt_bytes(seq.params.cache_salt)
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(prev, tokens, salt)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
            prev = h
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks that ``seq`` has filled since the last call."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        prev = seq.block_hashes[-1] if seq.block_hashes else None
        salt = salt_bytes(seq.params.cache_salt)
        for i in range(len(seq.block_hashes), num_full):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = chain_hash(prev, tokens, salt)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h not in self.hash_to_block and block.hash is None:
                block.hash = h
                block.token_ids = tokens
                self.hash_to_block[h] = block.block_id
            prev = h

    # -- allocation -----------------------------------------------------------------------

    def _num_blocks_needed(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> int:
        bs = self.block_size
        num_computed = len(hits) * bs if hits else seq.num_computed_tokens
        total_blocks = -(-(num_computed + num_new_tokens) // bs)
        needed = max(0, total_blocks - len(seq.block_table) - len(hits))
        needed += sum(1 for b in hits if self.blocks[b].ref_count == 0)  # revived from the free list
        if self._needs_copy_on_write(seq):
            needed += 1
        return needed

    def _needs_copy_on_write(self, seq: Sequence) -> bool:
        """The next token lands in a partly filled block that another sequence shares."""
        if seq.num_computed_tokens % self.block_size == 0 or not seq.block_table:
            return False
        return self.blocks[seq.block_table[-1]].ref_count > 1

    def can_allocate(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> bool:
        return self._num_blocks_needed(seq, hits, num_new_tokens) <= len(self.free_ids)

    def allocate(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> None:
        """Give ``seq`` room for ``num_new_tokens`` more tokens (after can_allocate)."""
        bs = self.block_size
        if not seq.block_table and self.enable_prefix_caching:
            self.num_prefix_queries += seq.num_tokens
            self.num_prefix_hits += len(hits) * bs
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(block.hash)  # type: ignore[arg-type]
        if hits:
            seq.num_computed_tokens = len(hits) * bs
            seq.num_cached_tokens = max(seq.num_cached_tokens, len(hits) * bs)
        if self._needs_copy_on_write(seq):
            old = self.blocks[seq.block_table[-1]]
            new = self._take_free_block()
            old.ref_count -= 1
            seq.block_table[-1] = new.block_id
            self.pending_copies.append((old.block_id, new.block_id))
        total_blocks = -(-(seq.num_computed_tokens + num_new_tokens) // bs)
        while len(seq.block_table) < total_blocks:
            seq.block_table.append(self._take_free_block().block_id)

    def _take_free_block(self) -> Block:
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cache entry: the block is about to be overwritten
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares every block of ``parent`` (copy-on-write for the partial last one)."""
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks; the tail is evicted before the head, unhashed ones first."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_ids[block_id] = None
                if block.hash is None:
                    self.free_ids.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
