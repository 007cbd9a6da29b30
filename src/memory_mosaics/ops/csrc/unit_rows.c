/* Rows scaled to a given length, and their gradients, CPU: the key normalisation and the value peek
   (spec section 2.1) as one pass each over rows of D coordinates.

   unit_keys:  r_i = 1 / ||x_i||,  k_i = r_i x_i,  q_i = beta_i k_i                 (forward)
               g = gk_i + beta_i gq_i,  dx_i = r_i (g - k_i <k_i, g>),  dbeta_i = <gq_i, k_i>  (backward)
   peek:       vbar_t = v~_{t+1} + gamma (v~_t - v~_{t+1})   (v~_T = 0)
               v_t = alpha r_t vbar_t, r_t = 1 / ||vbar_t||  (alpha = NULL: v_t = vbar_t)
               backward: gvbar_t = alpha r_t (G_t - vhat_t <vhat_t, G_t>) (G_t without alpha),
               dv~_t = gamma gvbar_t + (1 - gamma) gvbar_{t-1},  dalpha += <vhat_t, G_t>,
               dgamma += <gvbar_t, v~_t - v~_{t+1}>

   ops/unit_rows.py compiles this file and wraps it; tests compare every entry point with the torch
   formulas of ops/unit_rows.py and ops/peek.py (values and gradients).

   Why: written with torch operations, these formulas are 5 (forward) and about 12 (backward)
   passes over (B, H, T, D) tensors, each memory-bound; here each row is read from memory once and
   worked on in the L1 cache.

   Storage: float32 (_f32), float64 (_f64) or bfloat16 (_bf16, as raw 16-bit patterns, rounded to
   nearest even); arithmetic in float (double for float64), dot products in double (lanes.h), over
   rows first loaded into buffers of the arithmetic type. Per-row scalars
   (r, beta, dbeta) are float (double for float64). Rows are split among `stride` threads, thread
   `first` taking one contiguous share; a peek task is one batch element and `hc` heads, time the
   outer loop, so that v~ in the (B, T, H, D) layout is read in contiguous runs. */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lanes.h"

static inline float bf16_load(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

static inline uint16_t bf16_store(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if (f != f) return 0x7fc0; /* NaN stays NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

#define ID(x) (x)
#define SHARE(n, first, stride, lo, hi)                      \
    const int64_t lo = (int64_t)(n) * (first) / (stride);    \
    const int64_t hi = (int64_t)(n) * ((first) + 1) / (stride)

/* S: storage type, C: arithmetic type, LD / ST: load a stored value as C, store a C value, DOT: the
   lanes.h dot product of C rows. */
#define UNIT_ROWS(SUF, S, C, LD, ST, DOT)                                                           \
    static inline void load_##SUF(const S *src, int D, C *dst) {                                    \
        for (int d = 0; d < D; d++) dst[d] = LD(src[d]);                                            \
    }                                                                                               \
                                                                                                    \
    void unit_keys_fwd_##SUF(const S *x, const C *beta, S *k, S *q, C *r, int64_t rows, int D,      \
                             int first, int stride) {                                               \
        SHARE(rows, first, stride, lo, hi);                                                         \
        C xb[D];                                                                                    \
        for (int64_t i = lo; i < hi; i++) {                                                         \
            load_##SUF(x + i * D, D, xb);                                                           \
            const C ri = (C)(1.0 / sqrt(DOT(xb, xb, D))), bi = beta[i] * ri;                        \
            r[i] = ri;                                                                              \
            if (k)                                                                                  \
                for (int d = 0; d < D; d++) k[i * D + d] = ST(xb[d] * ri);                          \
            for (int d = 0; d < D; d++) q[i * D + d] = ST(xb[d] * bi);                              \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    void unit_keys_bwd_##SUF(const S *x, const C *r, const C *beta, const S *gk, const S *gq, S *dx, \
                             C *dbeta, int64_t rows, int D, int first, int stride) {                \
        SHARE(rows, first, stride, lo, hi);                                                         \
        C kb[D], gb[D], gqb[D];                                                                     \
        for (int64_t i = lo; i < hi; i++) {                                                         \
            const C ri = r[i], bi = beta[i];                                                        \
            load_##SUF(x + i * D, D, kb);                                                           \
            for (int d = 0; d < D; d++) kb[d] *= ri;                                                \
            if (gq)                                                                                 \
                load_##SUF(gq + i * D, D, gqb);                                                     \
            else                                                                                    \
                memset(gqb, 0, sizeof(gqb));                                                        \
            if (gk)                                                                                 \
                load_##SUF(gk + i * D, D, gb);                                                      \
            else                                                                                    \
                memset(gb, 0, sizeof(gb));                                                          \
            for (int d = 0; d < D; d++) gb[d] += bi * gqb[d];                                       \
            const C dot = (C)DOT(kb, gb, D);                                                        \
            for (int d = 0; d < D; d++) dx[i * D + d] = ST(ri * (gb[d] - kb[d] * dot));             \
            if (dbeta) dbeta[i] = (C)DOT(gqb, kb, D);                                               \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    /* vbar_t into `vbar` and v~_t - v~_{t+1} into `diff` (D values each); vt: the series' base,     \
       st: its time stride. */                                                                      \
    static inline void vbar_##SUF(const S *vt, int64_t st, int t, int T, int D, C gamma, C *vbar,   \
                                  C *diff) {                                                        \
        const S *now = vt + t * st, *next = vt + (t + 1) * st;                                      \
        for (int d = 0; d < D; d++) {                                                               \
            const C n1 = t + 1 < T ? LD(next[d]) : (C)0;                                            \
            diff[d] = LD(now[d]) - n1;                                                              \
            vbar[d] = n1 + gamma * diff[d];                                                         \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    /* v~ (B, H, T, D) with element strides sb, sh, st (1 along D); v (B, H, T, D) contiguous;     \
       gamma (H,), alpha (H,) or NULL. A task: one batch element, hc heads (time outer, heads inner). */ \
    void peek_fwd_##SUF(const S *vt, int64_t sb, int64_t sh, int64_t st, const C *gamma,            \
                        const C *alpha, S *v, int B, int H, int T, int D, int hc, int first,        \
                        int stride) {                                                               \
        const int chunks = (H + hc - 1) / hc;                                                       \
        C vbar[D], diff[D];                                                                         \
        for (int r = first; r < B * chunks; r += stride) {                                          \
            const int b = r / chunks, h0 = (r % chunks) * hc, h1 = h0 + hc < H ? h0 + hc : H;       \
            for (int t = 0; t < T; t++)                                                             \
                for (int h = h0; h < h1; h++) {                                                     \
                    vbar_##SUF(vt + b * sb + h * sh, st, t, T, D, gamma[h], vbar, diff);            \
                    const C scale = alpha ? alpha[h] * (C)(1.0 / sqrt(DOT(vbar, vbar, D))) : (C)1;  \
                    S *out = v + (((int64_t)b * H + h) * T + t) * D;                                \
                    for (int d = 0; d < D; d++) out[d] = ST(vbar[d] * scale);                       \
                }                                                                                   \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    /* G (B, H, T, D) contiguous; dvt with strides db, dh, dt; dgamma, dalpha (B H,) per series. */ \
    void peek_bwd_##SUF(const S *vt, int64_t sb, int64_t sh, int64_t st, const C *gamma,            \
                        const C *alpha, const S *G, S *dvt, int64_t db, int64_t dh, int64_t dt,     \
                        C *dgamma, C *dalpha, int B, int H, int T, int D, int hc, int first,        \
                        int stride) {                                                               \
        const int chunks = (H + hc - 1) / hc;                                                       \
        C vbar[D], diff[D], gv[D], prev[hc * D];                                                    \
        double sg[hc], sa[hc];                                                                      \
        for (int r = first; r < B * chunks; r += stride) {                                          \
            const int b = r / chunks, h0 = (r % chunks) * hc, h1 = h0 + hc < H ? h0 + hc : H;       \
            memset(prev, 0, sizeof(prev));                                                          \
            memset(sg, 0, sizeof(sg));                                                              \
            memset(sa, 0, sizeof(sa));                                                              \
            for (int t = 0; t < T; t++)                                                             \
                for (int h = h0; h < h1; h++) {                                                     \
                    const C g = gamma[h];                                                           \
                    C *pv = prev + (h - h0) * D;                                                    \
                    vbar_##SUF(vt + b * sb + h * sh, st, t, T, D, g, vbar, diff);                   \
                    load_##SUF(G + (((int64_t)b * H + h) * T + t) * D, D, gv);                      \
                    if (alpha) { /* gv = alpha r (G - vhat <vhat, G>), vhat = r vbar */             \
                        const C rn = (C)(1.0 / sqrt(DOT(vbar, vbar, D)));                           \
                        const C dot = (C)(rn * DOT(vbar, gv, D)), a = alpha[h] * rn;                \
                        sa[h - h0] += dot;                                                          \
                        for (int d = 0; d < D; d++) gv[d] = a * (gv[d] - vbar[d] * rn * dot);       \
                    }                                                                               \
                    sg[h - h0] += DOT(gv, diff, D);                                                 \
                    S *out = dvt + b * db + h * dh + t * dt;                                        \
                    for (int d = 0; d < D; d++) {                                                   \
                        out[d] = ST(g * gv[d] + ((C)1 - g) * pv[d]);                                \
                        pv[d] = gv[d];                                                              \
                    }                                                                               \
                }                                                                                   \
            for (int h = h0; h < h1; h++) {                                                         \
                dgamma[b * H + h] = (C)sg[h - h0];                                                  \
                if (dalpha) dalpha[b * H + h] = (C)sa[h - h0];                                      \
            }                                                                                       \
        }                                                                                           \
    }

UNIT_ROWS(f32, float, float, ID, ID, dot_float)
UNIT_ROWS(f64, double, double, ID, ID, dot_double)
UNIT_ROWS(bf16, uint16_t, float, bf16_load, bf16_store, dot_float)
