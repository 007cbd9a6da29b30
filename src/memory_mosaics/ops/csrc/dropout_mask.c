/* Dropout keep-masks from a counter-based generator, CPU.

       out[i] = 0 if u_i < threshold else scale ,   u_i = 32 bits of SplitMix64(seed + (i / 2) * G)

   (G = 2^64 / golden ratio, the SplitMix64 increment; each 64-bit output gives the elements 2j and
   2j + 1 their 32-bit uniforms). threshold = round(p 2^32), so an element is dropped with
   probability p to within 2^-32. ops/dropout_mask.py compiles this file and wraps it; tests check
   the drop rate, the independence of neighbours and the reproducibility from the seed.

   Why: torch's CPU dropout draws each element from a sequential Mersenne twister (about 5 ns per
   element here); a retrieval-weight dropout over N = 896 pairs per query spends more time drawing
   the mask than computing the read. The counter-based form is a pure function of (seed, i): the
   loop vectorises and threads split it freely.

   Layout: out has n elements, written 0 or `keep` (float32: the value 1 / (1 - p); 16-bit: its
   bfloat16 or float16 bit pattern); blocks of 4096 elements are tasks first, first + stride, ... */

#include <stdint.h>

#define BLOCK 4096
#define GOLDEN 0x9e3779b97f4a7c15ULL

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define DROPOUT_MASK(NAME, OUT)                                                                      \
    void NAME(OUT *out, int64_t n, uint64_t seed, uint32_t threshold, OUT keep, int first, int stride) { \
        for (int64_t b = (int64_t)first * BLOCK; b < n; b += (int64_t)stride * BLOCK) {              \
            const int64_t end = b + BLOCK < n ? b + BLOCK : n, pairs = (end - b) / 2;                \
            OUT *restrict o = out + b;                                                               \
            const uint64_t j0 = (uint64_t)b >> 1;                                                    \
            for (int64_t j = 0; j < pairs; j++) { /* b is even: pair j holds elements b + 2j, +1 */  \
                const uint64_t z = splitmix64(seed + (j0 + (uint64_t)j) * GOLDEN);                  \
                o[2 * j] = (uint32_t)z < threshold ? (OUT)0 : keep;                                  \
                o[2 * j + 1] = (uint32_t)(z >> 32) < threshold ? (OUT)0 : keep;                      \
            }                                                                                        \
            if ((end - b) & 1) { /* the odd last element of the tensor */                            \
                const uint64_t z = splitmix64(seed + (j0 + (uint64_t)pairs) * GOLDEN);               \
                o[2 * pairs] = (uint32_t)z < threshold ? (OUT)0 : keep;                              \
            }                                                                                        \
        }                                                                                            \
    }

DROPOUT_MASK(dropout_mask_f32, float)
DROPOUT_MASK(dropout_mask_u16, uint16_t)
