"""The Triton kernel of :mod:`.leaky_triton` (imported on first use, so that Triton reads
``TRITON_INTERPRET`` then). See that module for what it computes and how it is called."""

import triton
import triton.language as tl


@triton.jit
def combine(a1, y1, a2, y2):  # two stretches of the recurrence as one (a: product of decays)
    return a1 * a2, a2 * y1 + y2


@triton.jit
def leaky_scan_kernel(
    X, sxb, sxh, sxt,  # x (B, H, T, D), unit stride along D
    LOGD, sdb, sdh, sdt,  # log lambda, broadcast to (B, H, T) (zero strides allowed)
    S,  # initial state (B, H, D) contiguous, read when HAS_STATE
    Y, syb, syh, syt,  # output (B, H, T, D), unit stride along D
    K, kb, kh, kt,  # kbar (B, H, T, D), unit stride along D, read when WITH_DOT
    KS,  # kbar's initial state (B, H, D) contiguous, read when HAS_KS
    DOT,  # (n_blocks, B, H, T), the arithmetic's dtype: partial <y_t, kbar_{t-1}> per D block, when WITH_DOT
    B, H, T, D,
    HAS_STATE: tl.constexpr, REVERSE: tl.constexpr, WITH_DOT: tl.constexpr, HAS_KS: tl.constexpr,
    IS_F64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    block = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # 64-bit offsets: a (B, H, T, D) tensor may exceed 2^31 elements
    h = (bh % H).to(tl.int64)
    d = block * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    i = tl.arange(0, BLOCK_T)  # (BLOCK_T,) position in the tile, in scan order
    dmask = d < D
    if IS_F64:  # the arithmetic's dtype is the carried state's: float64 for float64 inputs, else float32
        carry = tl.zeros([BLOCK_D], dtype=tl.float64)
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_STATE:
        carry = tl.load(S + (b * H + h) * D + d, mask=dmask, other=0.0).to(carry.dtype)
    start = 0
    while start < T:  # (a while loop: Triton's interpreter cannot index a range by a runtime bound)
        pos = start + i
        tmask = pos < T
        if REVERSE:  # the time step at each scan position
            t = T - 1 - pos
        else:
            t = pos
        t = t.to(tl.int64)  # t * stride can pass 2^31 in a long sequence
        mask = dmask[:, None] & tmask[None, :]  # (BLOCK_D, BLOCK_T)
        x = tl.load(X + b * sxb + h * sxh + t[None, :] * sxt + d[:, None], mask=mask, other=0.0).to(carry.dtype)
        logd = tl.load(LOGD + b * sdb + h * sdh + t * sdt, mask=tmask, other=0.0).to(carry.dtype)
        lam = tl.exp(logd)[None, :] + tl.zeros([BLOCK_D, BLOCK_T], dtype=carry.dtype)
        prod, y = tl.associative_scan((lam, x), 1, combine)  # within the tile, from a zero state
        y = y + prod * carry[:, None]  # the carried state decays through the tile's steps
        tl.store(Y + b * syb + h * syh + t[None, :] * syt + d[:, None], y.to(Y.dtype.element_ty), mask=mask)
        last = tl.minimum(T - start, BLOCK_T) - 1
        carry = tl.sum(tl.where(i[None, :] == last, y, 0.0), axis=1)
        if WITH_DOT:  # <y_t, kbar_{t-1}>, kbar_{-1} the initial state (or zero)
            pmask = mask & (t[None, :] >= 1)
            k = tl.load(K + b * kb + h * kh + (t[None, :] - 1) * kt + d[:, None], mask=pmask, other=0.0)
            k = k.to(carry.dtype)
            if HAS_KS:
                ks = tl.load(KS + (b * H + h) * D + d, mask=dmask, other=0.0).to(carry.dtype)
                k = tl.where(t[None, :] == 0, ks[:, None] + tl.zeros([BLOCK_D, BLOCK_T], dtype=carry.dtype), k)
            dot = tl.sum(y * k, axis=0)  # (BLOCK_T,)
            tl.store(DOT + ((block * B + b) * H + h) * T + t, dot.to(DOT.dtype.element_ty), mask=tmask)
        start += BLOCK_T
