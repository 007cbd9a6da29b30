/* One decoding step of a memory, CPU: all the work between its projections, one pass per (batch,
   head) row (spec sections 2.1-2.2; ops/memory_step.py has the torch formulas).

   memory_step, the row-wise work:
   key:   kbar = phi + lambda_h kbar_prev       (state = NULL: kbar = phi, a key without a leaky average)
          k = kbar / ||kbar||  (normalize; else k = kbar),   q = beta_h k
   store (contextual memory, psi != NULL): the previous input's pair is completed by this input's v~ = psi
          keys[slot] = pend_k,   vbar = psi + gamma_h (pend_v - psi),
          values[slot] = valpha_h vbar / ||vbar||   (valpha = NULL: vbar)
   memory_read, the read:
          y = alpha_h sum_{s in [start, stop)} softmax_s(q . keys[s]) values[s]   (alpha = NULL: 1)
          in one pass over blocks of BLOCK pairs with a running maximum; an empty range reads 0.

   Layouts (element offsets, D contiguous): a row r = b H + h of phi, psi, state, pend_k, pend_v,
   kbar, k, q and y starts at r D; pair s of row (b, h) at b sb + h sh + s D in keys and values (sb = 0:
   pairs shared by the batch, the persistent memory's bank). Per-head scalars are arrays of H.
   One thread (ops/memory_step.py hands large reads to SDPA when torch has more than two).

   Why: written with torch operations, the step is some 20 operators on (B, H, 1, D) tensors, whose
   dispatch costs more than their arithmetic at batch 1; and in whole decoding steps this loop read
   faster than SDPA (A/B runs: docs/benchmarks.md, round 5). Float32 (_f32) and float64 (_f64); dot
   products in double (lanes.h), except the float32 read's (float, twice the SIMD lanes: with its
   pairs in cache the read measured 2.2x faster); sums and exponentials in the storage type. */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "lanes.h"

#define MEMORY_STEP(SUF, C, DOT)                                                                    \
    void memory_step_##SUF(const C *phi, const C *psi, const C *state, const C *pend_k,            \
                           const C *pend_v, C *kbar, C *k, C *q, C *keys, C *values, int64_t sb,    \
                           int64_t sh, int64_t slot, const C *decay, const C *beta, const C *gamma, \
                           const C *valpha, int normalize, int B, int H, int D) {                   \
        for (int r = 0; r < B * H; r++) {                                                           \
            const int b = r / H, h = r % H;                                                         \
            const int64_t row = (int64_t)r * D;                                                     \
            C *kb = kbar + row;                                                                     \
            for (int d = 0; d < D; d++)                                                             \
                kb[d] = state ? phi[row + d] + decay[h] * state[row + d] : phi[row + d];            \
            const C unit = normalize ? (C)(1.0 / sqrt(DOT(kb, kb, D))) : (C)1;                      \
            for (int d = 0; d < D; d++) {                                                           \
                k[row + d] = kb[d] * unit;                                                          \
                q[row + d] = k[row + d] * beta[h];                                                  \
            }                                                                                       \
            if (!psi) continue;                                                                     \
            C *ks = keys + b * sb + h * sh + slot * D, *vs = values + b * sb + h * sh + slot * D;   \
            for (int d = 0; d < D; d++) {                                                           \
                ks[d] = pend_k[row + d];                                                            \
                vs[d] = psi[row + d] + gamma[h] * (pend_v[row + d] - psi[row + d]);                 \
            }                                                                                       \
            if (valpha) {                                                                           \
                const C scale = valpha[h] * (C)(1.0 / sqrt(DOT(vs, vs, D)));                        \
                for (int d = 0; d < D; d++) vs[d] *= scale;                                         \
            }                                                                                       \
        }                                                                                           \
    }

#define BLOCK 32 /* pairs scored before their exponentials and sums: independent dot products */

#define MEMORY_READ(SUF, C, DOT, EXP)                                                              \
    void memory_read_##SUF(const C *q, const C *keys, const C *values, const C *alpha, C *y,       \
                           int64_t sb, int64_t sh, int64_t start, int64_t stop, int B, int H,     \
                           int D) {                                                                \
        C acc[D], p[BLOCK];                                                                         \
        for (int r = 0; r < B * H; r++) {                                                           \
            const int b = r / H, h = r % H;                                                         \
            const C *qr = q + (int64_t)r * D, *kr = keys + b * sb + h * sh, *vr = values + b * sb + h * sh; \
            C m = -INFINITY, l = 0;                                                                 \
            for (int d = 0; d < D; d++) acc[d] = 0;                                                 \
            for (int64_t s0 = start; s0 < stop; s0 += BLOCK) {                                      \
                const int n = stop - s0 < BLOCK ? (int)(stop - s0) : BLOCK;                         \
                C top = m;                                                                          \
                for (int j = 0; j < n; j++) {                                                       \
                    p[j] = (C)DOT(qr, kr + (s0 + j) * D, D);                                        \
                    top = p[j] > top ? p[j] : top;                                                  \
                }                                                                                   \
                if (top > m) { /* a new maximum: rescale what was summed so far */                  \
                    const C rescale = EXP(m - top);                                                 \
                    l *= rescale;                                                                   \
                    for (int d = 0; d < D; d++) acc[d] *= rescale;                                  \
                    m = top;                                                                        \
                }                                                                                   \
                for (int j = 0; j < n; j++) {                                                       \
                    p[j] = EXP(p[j] - m);                                                           \
                    l += p[j];                                                                      \
                }                                                                                   \
                for (int j = 0; j < n; j++) {                                                       \
                    const C *v = vr + (s0 + j) * D;                                                 \
                    for (int d = 0; d < D; d++) acc[d] += p[j] * v[d];                              \
                }                                                                                   \
            }                                                                                       \
            const C scale = (stop > start ? (C)1 / l : (C)0) * (alpha ? alpha[h] : (C)1);           \
            for (int d = 0; d < D; d++) y[(int64_t)r * D + d] = acc[d] * scale;                     \
        }                                                                                           \
    }

MEMORY_STEP(f32, float, dot_float)
MEMORY_STEP(f64, double, dot_double)
MEMORY_READ(f32, float, dot_float_single, expf)
MEMORY_READ(f64, double, dot_double, exp)
