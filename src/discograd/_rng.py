r"""Uniform noise for large CPU tensors, drawn by several threads at once.

Why. A CPU ``torch.Generator`` is one Mersenne Twister behind a lock: filling a
tensor with ``uniform_`` runs on one core at about 4 ns per float32, whatever
``torch.get_num_threads()`` says. For a 256 × 50257 Gumbel-Softmax that single
serial pass costs more than all the arithmetic after it. Here a large tensor is
cut into fixed chunks of :data:`CHUNK` elements and every chunk gets its own
Mersenne Twister, so a thread pool of ``torch.get_num_threads()`` workers fills
them concurrently (``uniform_`` releases the GIL).

Reproducibility. The chunk generators are seeded from the caller's generator
(or the default one), so ``torch.manual_seed`` / ``generator=`` make draws
reproducible, and the chunking depends only on the tensor's size, so the
result does not depend on the number of threads. Tensors below
:data:`MIN_NUMEL` elements use the caller's generator directly and get exactly
the stream ``torch.rand`` would give.

Stream independence. ``Generator.manual_seed`` keeps only 32 bits of the seed
(``mt19937`` is initialised from a ``uint32``), so seeding each chunk with a
random seed would give only :math:`2^{32}` distinct streams: a long training run
drawing tens of millions of chunks would repeat some noise exactly (the
birthday bound). Instead every chunk generator gets a full random 19968-bit
Mersenne Twister state, 624 words drawn from the parent generator, as
``numpy.random.MT19937`` does when seeded from a ``SeedSequence``. This writes
the state through ``Generator.set_state``, whose byte layout (torch's
``CPUGeneratorImplState``, unchanged since torch 1.5 for checkpoint
compatibility) is verified once at first use; if it ever differs, the chunked
path turns itself off and every draw uses the caller's generator serially.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = ["CHUNK", "MIN_NUMEL", "is_compiling", "uniform_"]

#: Elements per independent stream: 1 MiB of float32, large enough that the
#: per-chunk Python cost (about 10 µs) is under 1 % of the draw.
CHUNK = 1 << 18
#: Smaller tensors are drawn serially from the caller's generator.
MIN_NUMEL = 1 << 20

_MT_N = 624  # Mersenne Twister state words
_STATE_OFFSET = 24  # bytes before the state words in CPUGeneratorImplState


def _mt_init_words(seed: int) -> list[int]:
    """The state words of ``mt19937(seed)`` (Matsumoto & Nishimura's init_genrand)."""
    words = [seed & 0xFFFFFFFF]
    for i in range(1, _MT_N):
        prev = words[-1]
        words.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    return words


@functools.cache
def _state_template() -> Tensor | None:
    """A valid generator state whose 624 state words may be overwritten, or None.

    Checks the layout assumed by :func:`_chunk_generators` against a generator
    seeded with a known seed: seed word, ``left == 1`` and ``seeded == 1``
    (so the first draw regenerates the state), then the 624 init words stored
    one per 64-bit slot.
    """
    seed = 20241122
    state = torch.Generator().manual_seed(seed).get_state()
    end = _STATE_OFFSET + 8 * _MT_N
    if state.dtype != torch.uint8 or state.dim() != 1 or state.numel() < end:
        return None
    head = state[:_STATE_OFFSET].clone().view(torch.int32).tolist()
    words = state[_STATE_OFFSET:end].clone().view(torch.int64).tolist()
    if head != [seed, 0, 1, 1, 0, 0] or words != _mt_init_words(seed):
        return None
    return state


def _chunk_generators(n: int, parent: torch.Generator | None) -> list[torch.Generator] | None:
    """``n`` CPU generators with independent full random states drawn from ``parent``."""
    template = _state_template()
    if template is None:
        return None
    # high = 2**32 makes torch draw 64 random bits per word; only the low 32 are kept
    # by the state, all of them uniform.
    words = torch.randint(0, 1 << 32, (n, _MT_N), dtype=torch.int64, generator=parent)
    states = template.repeat(n, 1)
    states[:, _STATE_OFFSET : _STATE_OFFSET + 8 * _MT_N] = words.view(torch.uint8).view(n, -1)
    gens = []
    for i in range(n):
        g = torch.Generator()
        # clone: set_state reads from the storage start, so a row view would
        # hand it the wrong bytes.
        g.set_state(states[i].clone())
        gens.append(g)
    return gens


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="discograd-rng")
            _pool_size = size
        return _pool


def _forget_pool() -> None:
    # A forked child (DataLoader workers) inherits the executor object but not
    # its threads: submitting to it would hang forever.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()``, False on torch 2.2 (which lacks it)."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check is not None and check())


def uniform_(out: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``out`` in place with U[0, 1) draws; returns ``out``.

    Equivalent to ``out.uniform_(generator=generator)``; contiguous CPU tensors
    of at least :data:`MIN_NUMEL` elements are filled chunk-parallel (see the
    module docstring), except while ``torch.compile`` traces, where the plain
    op is what the compiler knows how to lower.
    """
    n = out.numel()
    if (
        n < MIN_NUMEL
        or out.device.type != "cpu"
        or not out.is_contiguous()
        or is_compiling()
        or (generator is not None and generator.device.type != "cpu")
    ):
        return out.uniform_(generator=generator)
    n_chunks = -(-n // CHUNK)
    gens = _chunk_generators(n_chunks, generator)
    if gens is None:
        return out.uniform_(generator=generator)
    flat = out.view(-1)
    # Inference mode is thread-local: the workers must share the caller's, or
    # writing into an inference tensor would be refused.
    inference = torch.is_inference_mode_enabled()

    def fill(i: int) -> None:
        with torch.inference_mode(inference):
            flat[i * CHUNK : (i + 1) * CHUNK].uniform_(generator=gens[i])

    workers = min(torch.get_num_threads(), n_chunks)
    if workers <= 1:
        for i in range(n_chunks):
            fill(i)
    else:
        # list() re-raises a worker's exception here.
        list(_executor(workers).map(fill, range(n_chunks)))
    return out
