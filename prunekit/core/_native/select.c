/* prunekit: native kernels for prune events on x86-64 CPUs with AVX2.
 *
 * Built on first use by prunekit/core/native.py with the system C compiler; every function works on one
 * float32 tensor given as its raw bits. A "key" is the bit pattern of |w| read as an unsigned integer:
 * keys of non-negative floats order as the floats do, so comparisons of keys rank magnitudes exactly.
 * Unstructured tensors: pk_bracket, pk_scan and pk_mask are the three passes of a selection whose logic
 * (the tie rule, when to give up) lives in Python. N:M groups and banks: pk_groups (up to 8 members)
 * and pk_banks (any size) decide whole tensors. Blocks: pk_block_scores scores them, pk_block_select
 * decides them, pk_block_expand spreads the decisions over the entries. Every result equals
 * prunekit/core/masks.py's. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define KEY_MASK 0x7FFFFFFFu
#define MAX_FINITE 0x7F7FFFFFu
#define SHIFT 15
#define BINS (1u << (31 - SHIFT))

/* Bumped whenever a signature or a meaning changes (the loader checks it). */
int pk_abi(void) { return 14; }

/* 1 when built with AVX2 and FMA and the CPU running it has both (asked with cpuid; nothing here executes
 * either before this answers, so the library loads on any x86-64 CPU). */
int pk_simd(void)
{
#ifdef __AVX2__
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
#else
    return 0;
#endif
}

/* Sample every stride-th key of w[0:n] (from index 0); histogram the sample by key >> SHIFT and find the
 * bins holding its r_lo-th and r_hi-th smallest (0-based; a rank past the end gives the bin after the
 * last). out[0], out[1]: keys lo <= hi spanning those bins, lo never inside bin 0 (zeros and the
 * smallest subnormals: the entries pruned before sit there) and hi at most the largest finite key;
 * out[2]: how many sampled keys lie in [lo, hi]. hist: BINS zeroed counters, zeroed again on return. */
void pk_bracket(const uint32_t *w, int64_t n, int64_t stride, int64_t r_lo, int64_t r_hi, uint32_t *hist,
                int64_t *out)
{
    uint32_t first = BINS, last = 0;
    for (int64_t i = 0; i < n; i += stride) {
        uint32_t b = (w[i] & KEY_MASK) >> SHIFT;
        hist[b]++;
        first = b < first ? b : first;
        last = b > last ? b : last;
    }
    if (first > last) { out[0] = 1; out[1] = 0; out[2] = 0; return; }  /* n == 0: an empty range */
    uint64_t lo_bin = (uint64_t)last + 1, hi_bin = (uint64_t)last + 1;
    int64_t cum = 0, before_lo = 0, through_hi = 0;
    int have_lo = 0;
    for (uint32_t b = first; b <= last; b++) {
        int64_t prev = cum;
        cum += hist[b];
        if (!have_lo && cum > r_lo) { lo_bin = b; before_lo = prev; have_lo = 1; }
        if (cum > r_hi) { hi_bin = b; break; }
    }
    through_hi = cum;  /* the sample up to and including hi_bin (all of it when hi_bin is past the end) */
    if (!have_lo) before_lo = cum;
    if (lo_bin < 1) {  /* the range never includes bin 0 */
        lo_bin = 1;
        before_lo = hist[0];
    }
    memset(hist + first, 0, (size_t)(last - first + 1) * sizeof *hist);
    uint64_t lo = lo_bin << SHIFT, hi = ((hi_bin + 1) << SHIFT) - 1;
    if (hi > MAX_FINITE) hi = MAX_FINITE;
    out[0] = (int64_t)lo;
    out[1] = (int64_t)hi;
    out[2] = through_hi > before_lo ? through_hi - before_lo : 0;
}

/* One pass over w[0:n]: returns how many keys lie in [lo, hi] (lo >= 1, hi < 2**31) and writes the first
 * `cap` of them, ascending by index, to pos (indices) and vals (keys). below_odd[0]: keys < lo;
 * below_odd[1]: entries that are NaN or inf, or pruned before (prior[i] == 0, if prior is given) but not
 * zero. */
int64_t pk_scan(const uint32_t *w, int64_t n, const uint8_t *prior, uint32_t lo, uint32_t hi, int64_t *pos,
                uint32_t *vals, int64_t cap, int64_t *below_odd)
{
    int64_t m = 0, i0 = 0, below = 0, odd = 0;
#ifdef __AVX2__
    const __m256i vkey = _mm256_set1_epi32((int32_t)KEY_MASK);
    const __m256i vlo = _mm256_set1_epi32((int32_t)lo);  /* every key and bound is < 2**31: signed compares */
    const __m256i vhi1 = _mm256_set1_epi32((int32_t)hi + 1);
    const __m256i vmax = _mm256_set1_epi32((int32_t)MAX_FINITE);
    const __m256i zero = _mm256_setzero_si256();
    while (i0 + 8 <= n) {
        /* 32-bit lane counters, added up every block of at most 2**20 entries */
        int64_t end = i0 + ((n - i0) & ~(int64_t)7);
        if (end - i0 > (1 << 20)) end = i0 + (1 << 20);
        __m256i vbelow = zero, vodd = zero;
        for (; i0 < end; i0 += 8) {
            __m256i k = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(w + i0)), vkey);
            __m256i lt = _mm256_cmpgt_epi32(vlo, k);
            __m256i le = _mm256_cmpgt_epi32(vhi1, k);
            vbelow = _mm256_sub_epi32(vbelow, lt);
            vodd = _mm256_sub_epi32(vodd, _mm256_cmpgt_epi32(k, vmax));
            if (prior) {
                __m256i p = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(prior + i0)));
                vodd = _mm256_sub_epi32(vodd, _mm256_andnot_si256(_mm256_cmpeq_epi32(k, zero),
                                                                  _mm256_cmpeq_epi32(p, zero)));
            }
            unsigned in = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(lt, le)));
            while (in) {
                int j = __builtin_ctz(in);
                in &= in - 1;
                if (m < cap) {
                    pos[m] = i0 + j;
                    vals[m] = w[i0 + j] & KEY_MASK;
                }
                m++;
            }
        }
        int32_t b[8], o[8];
        _mm256_storeu_si256((__m256i *)b, vbelow);
        _mm256_storeu_si256((__m256i *)o, vodd);
        for (int j = 0; j < 8; j++) {
            below += b[j];
            odd += o[j];
        }
    }
#endif
    for (int64_t i = i0; i < n; i++) {
        uint32_t k = w[i] & KEY_MASK;
        below += k < lo;
        odd += (k > MAX_FINITE) | (prior ? (prior[i] == 0) & (k != 0) : 0);
        if (k >= lo && k <= hi) {
            if (m < cap) {
                pos[m] = i;
                vals[m] = k;
            }
            m++;
        }
    }
    below_odd[0] = below;
    below_odd[1] = odd;
    return m;
}

/* Zero, in each of the nzero arrays of 4-byte entries, the entries at which keep[i] is 0 (keep holds 0 or 1):
 * z[i] &= -keep[i], so a kept entry's bits are unchanged and a pruned one becomes +0.0. */
static inline void zero_span(const uint8_t *restrict keep, int64_t n, uint32_t *const *zero, int64_t nzero,
                             int64_t at)
{
    for (int64_t j = 0; j < nzero; j++) {
        uint32_t *restrict z = zero[j] + at;
        for (int64_t i = 0; i < n; i++) z[i] &= -(uint32_t)keep[i];
    }
}

/* Zero, in each of the nfresh arrays, the entries keep[i] prunes that prior[i] kept (both 0 or 1): the entries
 * pruned for the first time. Those arrays must hold 0 already wherever prior is 0 (zeroed with it before, and
 * kept so since); then this leaves them exactly as zero_span would. A span with no such entry is not touched;
 * one with few writes only the runs of 16 entries (a cache line of floats) that hold one; one with many is
 * zeroed whole, as zero_span does: a scattered line costs a memory round trip (~50 ns here), a streamed one
 * a small part of that: below about one line in 32 the scattered writes win. */
static inline void fresh_span(const uint8_t *restrict keep, const uint8_t *restrict prior, int64_t n,
                              uint32_t *const *fresh, int64_t nfresh, int64_t at)
{
    int64_t runs = n / 16;
    uint32_t went = 0;  /* entries pruned anew: a bound on the runs to write (a sum the compiler vectorizes) */
    for (int64_t i = 0; i < n; i++) went += prior[i] & (keep[i] ^ 1);
    if (went == 0) return;
    if ((int64_t)went * 32 > runs) {
        zero_span(keep, n, fresh, nfresh, at);
        return;
    }
    uint64_t tail = 0;
    for (int64_t i = 16 * runs; i < n; i++) tail |= (uint64_t)(prior[i] & (keep[i] ^ 1));
    for (int64_t r = 0; r < runs; r++) {
        uint64_t k[2], p[2];
        memcpy(k, keep + 16 * r, 16);
        memcpy(p, prior + 16 * r, 16);
        if (!((p[0] & ~k[0]) | (p[1] & ~k[1]))) continue;
        uint32_t m[16];
        for (int i = 0; i < 16; i++) m[i] = -(uint32_t)keep[16 * r + i];
        for (int64_t j = 0; j < nfresh; j++) {
            uint32_t *restrict z = fresh[j] + at + 16 * r;
            for (int i = 0; i < 16; i++) z[i] &= m[i];
        }
    }
    if (tail)
        for (int64_t j = 0; j < nfresh; j++) {
            uint32_t *restrict z = fresh[j] + at;
            for (int64_t i = 16 * runs; i < n; i++) z[i] &= -(uint32_t)keep[i];
        }
}

#define ZCHUNK 4096

/* zero_span over keep[0:n] in slices of ZCHUNK entries (and fresh_span with prior, which nfresh > 0 needs):
 * each slice of the mask is read from cache by every array, so the whole is one pass over memory. */
void pk_zero(const uint8_t *keep, int64_t n, uint32_t *const *zero, int64_t nzero, const uint8_t *prior,
             uint32_t *const *fresh, int64_t nfresh)
{
    for (int64_t a = 0; a < n; a += ZCHUNK) {
        int64_t b = n - a < ZCHUNK ? n - a : ZCHUNK;
        zero_span(keep + a, b, zero, nzero, a);
        if (nfresh) fresh_span(keep + a, prior + a, b, fresh, nfresh, a);
    }
}

/* out[i] = 1 where the entry stays: key > t, or key == t at an index >= cut (the tie rule); else 0.
 * In the same pass (ZCHUNK entries at a time), the nzero arrays (which may include w itself: its keys
 * of a slice are read before they are zeroed) get +0.0 where the entry goes, and the nfresh arrays
 * where it goes and prior (which nfresh > 0 needs) kept it (fresh_span). Returns how many stay. */
int64_t pk_mask(const uint32_t *w, int64_t n, uint32_t t, int64_t cut, uint8_t *out, uint32_t *const *zero,
                int64_t nzero, const uint8_t *prior, uint32_t *const *fresh, int64_t nfresh)
{
    int64_t kept = 0, c = cut < n ? (cut > 0 ? cut : 0) : n;
    for (int64_t a = 0; a < n; a += ZCHUNK) {
        int64_t b = n - a < ZCHUNK ? n - a : ZCHUNK, split = c - a < 0 ? 0 : (c - a > b ? b : c - a);
        const uint32_t *wa = w + a;
        uint8_t *oa = out + a;
        for (int64_t i = 0; i < split; i++) {
            uint8_t k = (wa[i] & KEY_MASK) > t;
            oa[i] = k;
            kept += k;
        }
        for (int64_t i = split; i < b; i++) {
            uint8_t k = (wa[i] & KEY_MASK) >= t;
            oa[i] = k;
            kept += k;
        }
        zero_span(oa, b, zero, nzero, a);
        if (nfresh) fresh_span(oa, prior + a, b, fresh, nfresh, a);
    }
    return kept;
}

#ifdef __AVX2__
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint8_t v8b __attribute__((vector_size(8)));

/* -- N:M groups and banks of up to 8 ------------------------------------------------------------------
 * A weight (out, in, *spatial) read as (blocks, M, S): a group is the M entries w[b, :, s] (S apart). In
 * each, `count` entries are pruned (all those pruned before, prior == 0, if more): the lowest keys
 * first, those pruned before lowest of all, equal keys at the lower member index first. The rank of a
 * member is how many others go before it; it stays if its rank >= the group's need. */

/* ranks of the M members of 8 groups at once: x[j] holds member j of each group (-1: pruned before) */
static inline __attribute__((always_inline)) void
rank8(const v8i *x, v8i need, v8i *kept, const int M)
{
    for (int j = 0; j < M; j++) {
        v8i r = {0};
        for (int k = 0; k < j; k++) r -= x[k] <= x[j];
        for (int k = j + 1; k < M; k++) r -= x[k] < x[j];
        kept[j] = (r >= need) & 1;
    }
}

static inline __attribute__((always_inline)) int64_t
scalar_group(const uint32_t *wg, const uint8_t *pg, int64_t step, int32_t count, uint8_t *og, const int M, const int P)
{
    int32_t x[8], pruned = 0;
    int64_t odd = 0;
    for (int j = 0; j < M; j++) {
        int32_t k = (int32_t)(wg[j * step] & KEY_MASK);
        odd += k > (int32_t)MAX_FINITE;
        int32_t was = P ? pg[j * step] == 0 : 0;
        pruned += was;
        x[j] = was ? -1 : k;
    }
    int32_t need = pruned > count ? pruned : count;
    for (int j = 0; j < M; j++) {
        int32_t r = 0;
        for (int k = 0; k < j; k++) r += x[k] <= x[j];
        for (int k = j + 1; k < M; k++) r += x[k] < x[j];
        og[j * step] = (uint8_t)(r >= need);
    }
    return odd;
}

static inline __attribute__((always_inline)) int64_t
groups_impl(const uint32_t *restrict w, int64_t blocks, int64_t S, const uint8_t *restrict prior, int32_t count,
            uint8_t *restrict out, const int M, const int P)
{
    int64_t odd = 0;
    const v8i zero = {0};
    const v8i keymask = zero + (int32_t)KEY_MASK, vcount = zero + count, maxf = zero + (int32_t)MAX_FINITE;
    v8i vodd = {0};
    v8i x[8], kept[8];
    if (S == 1 && 8 % M == 0) {
        /* 8 consecutive entries (8/M whole groups) per vector; member j of a group meets member j+r (mod M)
           by a permutation of the lanes */
        __m256i rot[8];
        v8i earlier[8];
        for (int r = 1; r < M; r++) {
            int32_t idx[8];
            for (int l = 0; l < 8; l++) {
                idx[l] = (l / M) * M + (l % M + r) % M;
                earlier[r][l] = (l % M + r) % M < l % M ? -1 : 0;
            }
            rot[r] = _mm256_loadu_si256((const __m256i *)idx);
        }
        int64_t n = blocks * M, i = 0;
        for (; i + 8 <= n; i += 8) {
            v8i k;
            memcpy(&k, w + i, sizeof k);
            k &= keymask;
            vodd -= k > maxf;
            v8i need = vcount;
            if (P) {
                v8b pbytes;
                memcpy(&pbytes, prior + i, sizeof pbytes);
                v8i was = __builtin_convertvector(pbytes, v8i) == 0;
                k |= was;
                v8i pruned = -was;
                for (int r = 1; r < M; r++) pruned += (v8i)_mm256_permutevar8x32_epi32((__m256i)(-was), rot[r]);
                v8i more = pruned > vcount;
                need = (pruned & more) | (vcount & ~more);
            }
            v8i rank = {0};
            for (int r = 1; r < M; r++) {
                v8i y = (v8i)_mm256_permutevar8x32_epi32((__m256i)k, rot[r]);
                rank -= (y < k) | ((y == k) & earlier[r]);
            }
            v8b bytes = __builtin_convertvector((rank >= need) & 1, v8b);
            memcpy(out + i, &bytes, sizeof bytes);
        }
        for (; i < n; i += M) odd += scalar_group(w + i, P ? prior + i : 0, 1, count, out + i, M, P);
    } else if (S == 1) {
        /* 8 consecutive groups at a time: member j of group g is w[g*M + j] */
        const __m256i lanes = _mm256_setr_epi32(0, M, 2 * M, 3 * M, 4 * M, 5 * M, 6 * M, 7 * M);
        int64_t g = 0;
        for (; g + 8 <= blocks; g += 8) {
            const uint32_t *wg = w + g * M;
            v8i pruned = {0};
            for (int j = 0; j < M; j++) {
                v8i k = (v8i)_mm256_i32gather_epi32((const int *)(wg + j), lanes, 4) & keymask;
                vodd -= k > maxf;
                if (P) {
                    const uint8_t *pg = prior + g * M + j;
                    v8i p = {pg[0], pg[M], pg[2 * M], pg[3 * M], pg[4 * M], pg[5 * M], pg[6 * M], pg[7 * M]};
                    v8i was = p == 0;
                    pruned -= was;
                    k |= was;
                }
                x[j] = k;
            }
            v8i more = pruned > vcount;
            rank8(x, (pruned & more) | (vcount & ~more), kept, M);
            uint8_t *og = out + g * M;
            for (int j = 0; j < M; j++)
                for (int l = 0; l < 8; l++) og[l * M + j] = (uint8_t)kept[j][l];
        }
        for (; g < blocks; g++) odd += scalar_group(w + g * M, P ? prior + g * M : 0, 1, count, out + g * M, M, P);
    } else {
        for (int64_t b = 0; b < blocks; b++) {
            const uint32_t *wb = w + b * M * S;
            const uint8_t *pb = P ? prior + b * M * S : 0;
            uint8_t *ob = out + b * M * S;
            int64_t s = 0;
            for (; s + 8 <= S; s += 8) {
                v8i pruned = {0};
                for (int j = 0; j < M; j++) {
                    v8i k;
                    memcpy(&k, wb + j * S + s, sizeof k);
                    k &= keymask;
                    vodd -= k > maxf;
                    if (P) {
                        v8b pbytes;
                        memcpy(&pbytes, pb + j * S + s, sizeof pbytes);
                        v8i was = __builtin_convertvector(pbytes, v8i) == 0;
                        pruned -= was;
                        k |= was;
                    }
                    x[j] = k;
                }
                v8i more = pruned > vcount;
                rank8(x, (pruned & more) | (vcount & ~more), kept, M);
                for (int j = 0; j < M; j++) {
                    v8b bytes = __builtin_convertvector(kept[j], v8b);
                    memcpy(ob + j * S + s, &bytes, sizeof bytes);
                }
            }
            for (; s < S; s++) odd += scalar_group(wb + s, P ? pb + s : 0, S, count, ob + s, M, P);
        }
    }
    for (int l = 0; l < 8; l++) odd += vodd[l];
    return odd;
}

#define CALL(M, P) groups_impl(w, blocks, S, prior, (int32_t)count, out, M, P)
#define CASE(M) case M: return prior ? CALL(M, 1) : CALL(M, 0);

/* The masks of one weight's groups into out (1 = stays); returns how many entries are NaN or inf (the
 * caller's exact path then decides and reports), or -1 for a group size this file does not handle. */
int64_t pk_groups(const uint32_t *w, int64_t blocks, int64_t m, int64_t S, const uint8_t *prior, int64_t count,
                  uint8_t *out)
{
    switch (m) {
    CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    }
    return -1;
}
#endif

/* -- banks of any size ------------------------------------------------------------------------------------
 * The same groups as pk_groups, of any size B, ranked by a selection instead of comparing every pair.
 * A member's rank key is (key << 32 | member index): unique, and equal magnitudes order by index (the
 * tie rule). Members pruned before are pruned first; of the others, the lowest `need - pruned before`. */

static void swap64(uint64_t *a, uint64_t *b) { uint64_t t = *a; *a = *b; *b = t; }

/* the k-th smallest (0-based) of n values (equal ones allowed); reorders a */
static uint64_t select_kth(uint64_t *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < a[lo]) swap64(a + mid, a + lo);
        if (a[hi] < a[lo]) swap64(a + hi, a + lo);
        if (a[hi] < a[mid]) swap64(a + hi, a + mid);
        uint64_t pivot = a[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                swap64(a + i, a + j);
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return a[k];
    }
    return a[k];
}

/* the r-th smallest (1-based, r <= 8) of n values: one pass keeping the r smallest in order */
static uint64_t smallest_r(const uint64_t *a, int64_t n, int r)
{
    uint64_t best[8];
    int have = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = a[i];
        if (have == r && v >= best[r - 1]) continue;
        int j = have < r ? have++ : r - 1;
        while (j > 0 && best[j - 1] > v) {
            best[j] = best[j - 1];
            j--;
        }
        best[j] = v;
    }
    return best[r - 1];
}

/* One bank (members at g[j * S], j < B): prune all members pruned before and the lowest `r` others. */
static void select_bank(const uint32_t *g, const uint8_t *p, int64_t B, int64_t S, int64_t r, uint8_t *o,
                        uint64_t *scratch)
{
    int64_t n = 0;
    for (int64_t j = 0; j < B; j++)
        if (!p || p[j * S]) scratch[n++] = (uint64_t)(g[j * S] & KEY_MASK) << 32 | (uint64_t)j;
    uint64_t cut = 0;
    if (r > 0 && r < n) cut = r <= 8 ? smallest_r(scratch, n, (int)r) : select_kth(scratch, n, r - 1);
    for (int64_t j = 0; j < B; j++) {
        uint64_t key = (uint64_t)(g[j * S] & KEY_MASK) << 32 | (uint64_t)j;
        o[j * S] = (uint8_t)((!p || p[j * S]) && r < n && (r == 0 || key > cut));
    }
}

#define CHUNK 64
#define FEW 8

/* pk_banks for `cs` banks side by side ("lanes"): member j of lane t at base + j * ms + t * ls; ms = S and
 * ls = 1 for banks at consecutive positions of one block, ms = 1 and ls = B for consecutive blocks of a
 * weight without spatial axes (LS1: ls == 1, known when compiled). P: whether there is a previous mask. */
static inline __attribute__((always_inline)) int64_t
banks_chunk(const uint32_t *restrict w, int64_t base, int64_t cs, int64_t B, int64_t ms, int64_t ls_,
            const uint8_t *restrict prior, int64_t count, uint8_t *restrict out, uint64_t *scratch, const int P,
            const int LS1)
{
    const int64_t ls = LS1 ? 1 : ls_;
    int32_t pruned[CHUNK] = {0}, bad[CHUNK] = {0}, r[CHUNK], less[CHUNK] = {0}, ties[CHUNK] = {0};
    uint32_t best[FEW][CHUNK], thr[CHUNK], v[CHUNK];
    int64_t odd = 0;
    for (int64_t j = 0; j < B; j++) {
        const uint32_t *wr = w + base + j * ms;
        const uint8_t *pr = prior + (P ? base + j * ms : 0);
        for (int64_t t = 0; t < cs; t++) {
            bad[t] += (wr[t * ls] & KEY_MASK) > MAX_FINITE;
            if (P) pruned[t] += pr[t * ls] == 0;
        }
    }
    int32_t most = 0;
    for (int64_t t = 0; t < cs; t++) {
        odd += bad[t];
        r[t] = (count > pruned[t] ? (int32_t)count : pruned[t]) - pruned[t];
        if (r[t] <= FEW && r[t] > most) most = r[t];
    }
    if (most == 0) {  /* no bank prunes up to FEW more: the previous mask (or selections below) */
        for (int64_t j = 0; j < B; j++) {
            const uint8_t *pr = prior + (P ? base + j * ms : 0);
            uint8_t *orow = out + base + j * ms;
            for (int64_t t = 0; t < cs; t++) orow[t * ls] = P ? pr[t * ls] != 0 : 1;
        }
    } else {
        for (int i = 0; i < most; i++)
            for (int64_t t = 0; t < cs; t++) best[i][t] = UINT32_MAX;
        for (int64_t j = 0; j < B; j++) {  /* the `most` smallest keys of each bank, members pruned before left out */
            const uint32_t *wr = w + base + j * ms;
            const uint8_t *pr = prior + (P ? base + j * ms : 0);
            for (int64_t t = 0; t < cs; t++) v[t] = (P && pr[t * ls] == 0) ? UINT32_MAX : (wr[t * ls] & KEY_MASK);
            for (int i = 0; i < most; i++) {
                for (int64_t t = 0; t < cs; t++) {
                    uint32_t lo = v[t] < best[i][t] ? v[t] : best[i][t];
                    v[t] = v[t] < best[i][t] ? best[i][t] : v[t];
                    best[i][t] = lo;
                }
            }
        }
        for (int64_t t = 0; t < cs; t++) {
            int32_t k = r[t] < 1 ? 1 : (r[t] > most ? most : r[t]);
            thr[t] = r[t] == 0 ? 0 : best[k - 1][t];
        }
        for (int64_t j = 0; j < B; j++) {
            const uint32_t *wr = w + base + j * ms;
            const uint8_t *pr = prior + (P ? base + j * ms : 0);
            for (int64_t t = 0; t < cs; t++) less[t] += ((wr[t * ls] & KEY_MASK) < thr[t]) & (P ? pr[t * ls] != 0 : 1);
        }
        for (int64_t j = 0; j < B; j++) {  /* the mask; of the keys equal to the threshold, the first go */
            const uint32_t *wr = w + base + j * ms;
            const uint8_t *pr = prior + (P ? base + j * ms : 0);
            uint8_t *orow = out + base + j * ms;
            for (int64_t t = 0; t < cs; t++) {
                uint32_t k = wr[t * ls] & KEY_MASK;
                int32_t other = P ? pr[t * ls] != 0 : 1;
                int32_t equal = (k == thr[t]) & other;
                int32_t stays = other & ((r[t] == 0) | (k > thr[t]) | (equal & (ties[t] >= r[t] - less[t])));
                ties[t] += equal;
                orow[t * ls] = (uint8_t)stays;
            }
        }
    }
    for (int64_t t = 0; t < cs; t++)
        if (r[t] > FEW || (r[t] > 0 && r[t] >= B - pruned[t]))
            select_bank(w + base + t * ls, P ? prior + base + t * ls : 0, B, ms, r[t], out + base + t * ls, scratch);
    return odd;
}

/* pk_banks for one bank of consecutive entries g[0:B] (S == 1: 1x1 convolutions, linear layers), in loops
 * along its members that the compiler vectorizes: one makes the keys (members pruned before: UINT32_MAX, above
 * every key) and counts what was pruned before; a bank that must prune r <= 2 more takes its smallest key r
 * times (the first of equal keys goes first: the tie rule). The ramp's events mostly prune none or one
 * more per bank: this costs a fifth of transposing CHUNK banks side by side (banks_chunk), measured on
 * 1M-entry tensors; for 3 to FEW more, banks_chunk costs less. keys: room for B values. */
static int64_t bank_one(const uint32_t *restrict g, const uint8_t *restrict p, int64_t B, int64_t count,
                        uint8_t *restrict o, uint32_t *restrict keys, uint64_t *scratch)
{
    int32_t bad = 0, pruned = 0;
    for (int64_t j = 0; j < B; j++) {
        uint32_t k = g[j] & KEY_MASK;
        int32_t gone = p ? p[j] == 0 : 0;
        bad += k > MAX_FINITE;
        pruned += gone;
        keys[j] = gone ? UINT32_MAX : k;
    }
    int64_t r = (count > pruned ? count : pruned) - pruned;
    if (r > 2) {  /* not for few_more's banks: kept for any caller */
        select_bank(g, p, B, 1, r, o, scratch);
        return bad;
    }
    int32_t none = r >= B - pruned;  /* every member goes (select_bank's r >= n) */
    for (int64_t j = 0; j < B; j++) o[j] = (uint8_t)(!none && keys[j] != UINT32_MAX);
    if (none) return bad;
    for (int64_t i = 0; i < r; i++) {
        uint32_t lo = UINT32_MAX;
        for (int64_t j = 0; j < B; j++) lo = keys[j] < lo ? keys[j] : lo;
        int64_t at = 0;
        while (keys[at] != lo) at++;
        keys[at] = UINT32_MAX;
        o[at] = 0;
    }
    return bad;
}

/* Whether each of the cs banks of B consecutive entries from prior (None: nothing pruned before) prunes at
 * most 2 more to prune count. */
static int few_more(const uint8_t *restrict prior, int64_t cs, int64_t B, int64_t count)
{
    if (!prior) return count <= 2;
    for (int64_t t = 0; t < cs; t++) {
        int32_t kept = 0;
        for (int64_t j = 0; j < B; j++) kept += prior[t * B + j];
        if (count - (B - kept) > 2) return 0;
    }
    return 1;
}

/* As pk_groups for groups of any size B >= 2; scratch: room for B + B * CHUNK * 6 / 8 values. Banks of
 * consecutive entries (S == 1) that prune at most 2 more go one at a time (bank_one). Otherwise positions
 * are taken CHUNK at a time, each lane one bank, in loops along the positions (vectorized):
 * a pass counts what each bank pruned before; where a bank must prune up to FEW more, a pass keeps its
 * FEW smallest keys (a min/max insertion), one counts the keys below the threshold, one writes the
 * mask with the tie rule (the first of the equal keys go). Banks that must prune more than FEW run a
 * selection of their own (the first event, a big jump in sparsity). */
int64_t pk_banks(const uint32_t *w, int64_t blocks, int64_t B, int64_t S, const uint8_t *prior, int64_t count,
                 uint8_t *out, uint64_t *scratch)
{
    int64_t odd = 0;
    if (S < CHUNK) {
        /* few positions per block: CHUNK banks (of any blocks and positions) at a time, copied side by side
         * into scratch (members CHUNK apart) so that the passes run along contiguous lanes; banks of
         * consecutive entries that all prune at most 2 more go one at a time instead (bank_one) */
        uint32_t *tw = (uint32_t *)(scratch + B);
        uint8_t *tp = (uint8_t *)(tw + B * CHUNK), *to = tp + B * CHUNK;
        int64_t banks = blocks * S;
        for (int64_t q0 = 0; q0 < banks; q0 += CHUNK) {
            int64_t cs = banks - q0 < CHUNK ? banks - q0 : CHUNK, at[CHUNK];
            if (S == 1 && few_more(prior ? prior + q0 * B : NULL, cs, B, count)) {
                for (int64_t t = 0; t < cs; t++)
                    odd += bank_one(w + (q0 + t) * B, prior ? prior + (q0 + t) * B : NULL, B, count,
                                    out + (q0 + t) * B, tw, scratch);
                continue;
            }
            for (int64_t t = 0; t < cs; t++) at[t] = (q0 + t) / S * B * S + (q0 + t) % S;
            for (int64_t j = 0; j < B; j++)
                for (int64_t t = 0; t < cs; t++) {
                    tw[j * CHUNK + t] = w[at[t] + j * S];
                    if (prior) tp[j * CHUNK + t] = prior[at[t] + j * S];
                }
            odd += prior ? banks_chunk(tw, 0, cs, B, CHUNK, 1, tp, count, to, scratch, 1, 1)
                         : banks_chunk(tw, 0, cs, B, CHUNK, 1, tp, count, to, scratch, 0, 1);
            for (int64_t j = 0; j < B; j++)
                for (int64_t t = 0; t < cs; t++) out[at[t] + j * S] = to[j * CHUNK + t];
        }
        return odd;
    }
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t s0 = 0; s0 < S; s0 += CHUNK) {
            int64_t cs = S - s0 < CHUNK ? S - s0 : CHUNK, base = b * B * S + s0;
            odd += prior ? banks_chunk(w, base, cs, B, S, 1, prior, count, out, scratch, 1, 1)
                         : banks_chunk(w, base, cs, B, S, 1, prior, count, out, scratch, 0, 1);
        }
    return odd;
}

/* The entry mask of a weight (O, I, *spatial) (S spatial positions) from the decisions of its r x c blocks
 * (kept[(s * (O / r) + o / r) * (I / c) + i / c], 0 or 1: pk_block_scores' order), ANDed with prior (if
 * given: a previous entry mask); each output row's I * S entries are written, then the nzero arrays get
 * +0.0 where the row's mask is 0, and the nfresh arrays where it is 0 and prior is 1 (fresh_span; nfresh > 0
 * needs prior). Returns how many entries stay, or -1 when out of memory. */
int64_t pk_block_expand(const uint8_t *kept, int64_t O, int64_t I, int64_t S, int64_t r, int64_t c,
                        const uint8_t *prior, uint8_t *out, uint32_t *const *zero, int64_t nzero,
                        uint32_t *const *fresh, int64_t nfresh)
{
    int64_t ob = O / r, ib = I / c, plane = ob * ib, n = I * S, stay = 0;
    uint8_t *base = malloc(n > 0 ? n : 1);  /* one block row's decisions spread over an output row */
    if (!base) return -1;
    for (int64_t q = 0; q < ob; q++) {
        const uint8_t *krow = kept + q * ib;
        for (int64_t s = 0; s < S; s++) {
            const uint8_t *ks = krow + s * plane;
            for (int64_t jb = 0; jb < ib; jb++) {
                uint8_t v = ks[jb], *d = base + jb * c * S + s;
                for (int64_t t = 0; t < c; t++) d[t * S] = v;
            }
        }
        for (int64_t o = q * r; o < (q + 1) * r; o++) {
            uint8_t *restrict row = out + o * n;
            if (prior) {
                const uint8_t *restrict p = prior + o * n;
                for (int64_t j = 0; j < n; j++) row[j] = base[j] & p[j];
            } else {
                memcpy(row, base, n);
            }
            int64_t kept_row = 0;
            for (int64_t j = 0; j < n; j++) kept_row += row[j];
            stay += kept_row;
            for (int64_t a = 0; a < n; a += ZCHUNK) {
                int64_t b = n - a < ZCHUNK ? n - a : ZCHUNK;
                zero_span(row + a, b, zero, nzero, o * n + a);
                if (nfresh) fresh_span(row + a, prior + o * n + a, b, fresh, nfresh, o * n + a);
            }
        }
    }
    free(base);
    return stay;
}

/* The decisions (1 = stays) of n blocks scored by pk_block_scores (finite, >= 0; the caller checks) after
 * pruning count of them: the blocks that kept no entry before (before[i] == 0, if before is given) first,
 * all of them even if more than count, then the lowest scores, equal ones at the lower index first (the
 * reference's rule). A non-negative double's bits order as its value: a pass makes a histogram of the top
 * SEL_BITS bits of the other blocks' keys, the bin that holds the r-th smallest is copied out for
 * select_kth, and a last pass decides; three branch-light passes instead of a selection over all scores.
 * Returns how many stay, or -1 when out of memory. */
#define SEL_BITS 12
int64_t pk_block_select(const double *scores, int64_t n, const uint8_t *before, int64_t count, uint8_t *out)
{
    uint32_t hist[1 << SEL_BITS] = {0}, part[3][1 << SEL_BITS] = {{0}};
    const int shift = 63 - SEL_BITS;
    const uint64_t low = (1u << SEL_BITS) - 1;
    int64_t pruned = 0, i = 0;
    /* four histograms side by side: neighbouring blocks often share a bin, and one counter would make
     * each increment wait for the one before */
    for (; i + 4 <= n; i += 4) {
        uint64_t k[4];
        memcpy(k, scores + i, 32);
        int g0 = before && !before[i], g1 = before && !before[i + 1];
        int g2 = before && !before[i + 2], g3 = before && !before[i + 3];
        pruned += g0 + g1 + g2 + g3;
        hist[(k[0] >> shift) & low] += !g0;
        part[0][(k[1] >> shift) & low] += !g1;
        part[1][(k[2] >> shift) & low] += !g2;
        part[2][(k[3] >> shift) & low] += !g3;
    }
    for (; i < n; i++) {
        uint64_t k;
        memcpy(&k, scores + i, 8);
        int gone = before && !before[i];
        pruned += gone;
        hist[(k >> shift) & low] += !gone;
    }
    for (uint64_t b = 0; b <= low; b++) hist[b] += part[0][b] + part[1][b] + part[2][b];
    int64_t m = n - pruned, r = (count > pruned ? count : pruned) - pruned;
    if (r >= m) {
        memset(out, 0, (size_t)n);
        return 0;
    }
    if (r == 0) {
        for (int64_t i = 0; i < n; i++) out[i] = (uint8_t)(!before || before[i]);
        return m;
    }
    int64_t below = 0;
    uint64_t bin = 0;
    while (below + hist[bin] < r) below += hist[bin++];
    uint64_t *keys = malloc((size_t)hist[bin] * sizeof *keys);
    if (!keys) return -1;
    int64_t c = 0, room = hist[bin];
    for (int64_t i = 0; i < n && c < room; i++) {  /* branch-free: which blocks were kept is noise */
        uint64_t k;
        memcpy(&k, scores + i, 8);
        keys[c] = k;
        c += (before ? before[i] != 0 : 1) & ((k >> shift) == bin);
    }
    uint64_t cut = select_kth(keys, c, r - below - 1);
    int64_t less = below;
    for (int64_t j = 0; j < c; j++) less += keys[j] < cut;
    int64_t ties = r - less;  /* of the keys equal to the cut, this many go: the first */
    for (int64_t i = 0; i < n; i++) {
        uint64_t k;
        memcpy(&k, scores + i, 8);
        int64_t kept = before ? before[i] != 0 : 1, equal = kept & (k == cut);
        out[i] = (uint8_t)(kept & ((k > cut) | (equal & (ties <= 0))));
        ties -= equal;
    }
    free(keys);
    return m - r;
}

/* -- blocks ---------------------------------------------------------------------------------------------
 * A weight (O, I, *spatial) (S spatial positions) cut into r x c blocks of its (O, I) plane at every
 * spatial position: score[(s * (O / r) + o / r) * (I / c) + i / c] = the sum of w[o, i, s]^2 over the
 * block, in float64 (a float32 square is exact there; NaN or inf make the score so): the r rows of a
 * block row are summed entry by entry (along contiguous memory), then each block's c columns. kept[...]
 * (if prior is given): whether any entry of the block was kept before. Returns 0, or -1 when out of
 * memory. */
int64_t pk_block_scores(const float *w, int64_t O, int64_t I, int64_t S, int64_t r, int64_t c,
                        const uint8_t *prior, double *scores, uint8_t *kept)
{
    const int64_t cols = I / c, plane = (O / r) * cols, row = I * S;
    double *acc = malloc((size_t)row * sizeof *acc);
    uint8_t *any = malloc((size_t)row);
    if (!acc || !any) {
        free(acc);
        free(any);
        return -1;
    }
    for (int64_t bo = 0; bo < O / r; bo++) {
        const float *x = w + bo * r * row;
        for (int64_t j = 0; j < row; j++) {
            double v = (double)x[j];
            acc[j] = v * v;
        }
        for (int64_t a = 1; a < r; a++)
            for (int64_t j = 0; j < row; j++) {
                double v = (double)x[a * row + j];
                acc[j] += v * v;
            }
        if (prior) {
            const uint8_t *p = prior + bo * r * row;
            for (int64_t j = 0; j < row; j++) any[j] = p[j] != 0;
            for (int64_t a = 1; a < r; a++)
                for (int64_t j = 0; j < row; j++) any[j] |= p[a * row + j] != 0;
        }
        for (int64_t bi = 0; bi < cols; bi++)
            for (int64_t s = 0; s < S; s++) {
                double sum = 0.0;
                uint8_t k = 0;
                for (int64_t b = 0; b < c; b++) {
                    sum += acc[(bi * c + b) * S + s];
                    if (prior) k |= any[(bi * c + b) * S + s];
                }
                scores[s * plane + bo * cols + bi] = sum;
                if (prior) kept[s * plane + bo * cols + bi] = k;
            }
    }
    free(acc);
    free(any);
    return 0;
}

/* -- element-wise updates -----------------------------------------------------------------------------------
 * One optimizer step per tensor in one pass, with its mask (NULL: none; bytes 0 or 1, as bool tensors hold
 * them): where it is 0, the weight and its state come out +0.0 whatever went in (a bitwise AND with the
 * mask spread to 32 bits: a multiply would give -0.0 for a negative value and NaN for NaN). A prune event
 * leaves its newly pruned entries to the update that follows it: this writes them in the pass the update
 * makes anyway. With zero_grad, the gradient gets +0.0 where the mask is 0 too, written back only in the
 * UPD-entry chunks that hold a pruned entry whose gradient is not +0.0 (a masked gradient is left alone). */
#define UPD 64

static inline uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* The gradient's chunk [a, a + e) to +0.0 where the mask is 0, if any such entry is not +0.0 yet. */
static inline __attribute__((always_inline)) void
zero_grad_chunk(float *restrict g, const uint8_t *restrict mask, int64_t a, int64_t e)
{
    uint32_t dirty = 0;
    for (int64_t i = a; i < a + e; i++) dirty |= bits_of(g[i]) & ((uint32_t)mask[i] - 1u);
    if (dirty)
        for (int64_t i = a; i < a + e; i++) g[i] = float_of(bits_of(g[i]) & -(uint32_t)mask[i]);
}

/* SGD as torch's single-tensor SGD computes it on CPU, whose add with alpha is a fused multiply-add
 * (ATen's vectorised fmadd): g' = -g if maximize; g' = fma(w, wd, g') with weight decay; with momentum
 * b = fma(g', 1 - dampening, b * momentum) and the direction b, or fma(b, momentum, g') with Nesterov;
 * then w = fma(direction, -lr, w). WD, MOM, NEST, MASK: known when compiled (four loops, no branch). */
static inline __attribute__((always_inline)) void
sgd_impl(float *restrict w, float *restrict g, float *restrict b, const uint8_t *restrict mask, int64_t n, float wd,
         float momentum, float damp1, float neg_lr, float sign, int zero_grad, const int WD, const int MOM,
         const int NEST, const int MASK)
{
    const int64_t span = MASK && zero_grad ? UPD : n;  /* chunks only to find the gradient's to write */
    for (int64_t a = 0; a < n; a += span) {
        int64_t e = n - a < span ? n - a : span;
        for (int64_t i = a; i < a + e; i++) {
            float gi = sign * g[i];
            if (WD) gi = fmaf(w[i], wd, gi);
            float d = gi, bi = 0.0f;
            if (MOM) {
                bi = fmaf(gi, damp1, b[i] * momentum);
                d = NEST ? fmaf(bi, momentum, gi) : bi;
            }
            float wi = fmaf(d, neg_lr, w[i]);
            if (MASK) {
                uint32_t k = -(uint32_t)mask[i];
                wi = float_of(bits_of(wi) & k);
                bi = float_of(bits_of(bi) & k);
            }
            w[i] = wi;
            if (MOM) b[i] = bi;
        }
        if (MASK && zero_grad) zero_grad_chunk(g, mask, a, e);
    }
}

#define SGD_CASE(WD, MOM, NEST, MASK) \
    sgd_impl(w, g, b, mask, n, wd, momentum, damp1, neg_lr, sign, zero_grad, WD, MOM, NEST, MASK)

/* One SGD step over w[0:n] (b: the momentum buffer, or NULL). Without momentum (a schedule may take it to 0
 * for a while) torch leaves an existing buffer as it is; with a mask it still gets +0.0 wherever the mask
 * prunes, so that when momentum comes back the pruned weights stay 0. */
void pk_sgd(float *w, float *g, float *b, const uint8_t *mask, int64_t n, float wd, float momentum, float damp1,
            float neg_lr, int nesterov, int maximize, int zero_grad)
{
    const float sign = maximize ? -1.0f : 1.0f;  /* -g exactly, without a branch in the loop */
    const int has_wd = wd != 0.0f, has_mom = momentum != 0.0f, nest = has_mom && nesterov;
    if (!mask) {
        if (has_wd) {
            if (nest) SGD_CASE(1, 1, 1, 0); else if (has_mom) SGD_CASE(1, 1, 0, 0); else SGD_CASE(1, 0, 0, 0);
        } else {
            if (nest) SGD_CASE(0, 1, 1, 0); else if (has_mom) SGD_CASE(0, 1, 0, 0); else SGD_CASE(0, 0, 0, 0);
        }
    } else if (has_wd) {
        if (nest) SGD_CASE(1, 1, 1, 1); else if (has_mom) SGD_CASE(1, 1, 0, 1); else SGD_CASE(1, 0, 0, 1);
    } else {
        if (nest) SGD_CASE(0, 1, 1, 1); else if (has_mom) SGD_CASE(0, 1, 0, 1); else SGD_CASE(0, 0, 0, 1);
    }
    if (mask && b && !has_mom)
        for (int64_t i = 0; i < n; i++) b[i] = float_of(bits_of(b[i]) & -(uint32_t)mask[i]);
}

/* One Adam / AdamW step over w[0:n] in float32, in the order of torch's single-tensor Adam (weight decay,
 * the first moment by lerp, the second by mul and addcmul, then addcdiv with sqrt(v) / bc2_sqrt + eps), one
 * pass instead of five. decay_mul: 1 - lr * weight_decay (AdamW), applied first; l2: weight_decay for
 * Adam's L2 (grad += l2 * w); neg_step: -lr / (1 - beta1^t); bc2_sqrt: sqrt(1 - beta2^t). Written so the
 * compiler vectorises it (branch-free); no FMA contraction, so each product rounds as torch's
 * separate ops do where torch does not fuse (built with -ffp-contract=off: clang contracts by default).
 * mask, zero_grad: as pk_sgd's. */
static inline __attribute__((always_inline)) void
adam_impl(float *restrict w, float *restrict g, float *restrict m, float *restrict v, const uint8_t *restrict mask,
          int64_t n, float decay_mul, float l2, float one_minus_beta1, float beta2, float one_minus_beta2,
          float neg_step, float bc2_sqrt, float eps, float sign, int zero_grad, const int MASK)
{
    const int64_t span = MASK && zero_grad ? UPD : n;
    for (int64_t a = 0; a < n; a += span) {
        int64_t e = n - a < span ? n - a : span;
        for (int64_t i = a; i < a + e; i++) {
            float wi = w[i] * decay_mul;
            float grad = sign * g[i] + l2 * wi;
            float mi = m[i] + one_minus_beta1 * (grad - m[i]);
            float vi = v[i] * beta2 + one_minus_beta2 * (grad * grad);
            float out = wi + neg_step * (mi / (sqrtf(vi) / bc2_sqrt + eps));
            if (MASK) {
                uint32_t k = -(uint32_t)mask[i];
                out = float_of(bits_of(out) & k);
                mi = float_of(bits_of(mi) & k);
                vi = float_of(bits_of(vi) & k);
            }
            w[i] = out;
            m[i] = mi;
            v[i] = vi;
        }
        if (MASK && zero_grad) zero_grad_chunk(g, mask, a, e);
    }
}

void pk_adam(float *w, float *g, float *m, float *v, const uint8_t *mask, int64_t n, float decay_mul, float l2,
             float one_minus_beta1, float beta2, float one_minus_beta2, float neg_step, float bc2_sqrt, float eps,
             int maximize, int zero_grad)
{
    const float sign = maximize ? -1.0f : 1.0f;
    if (mask)
        adam_impl(w, g, m, v, mask, n, decay_mul, l2, one_minus_beta1, beta2, one_minus_beta2, neg_step, bc2_sqrt,
                  eps, sign, zero_grad, 1);
    else
        adam_impl(w, g, m, v, mask, n, decay_mul, l2, one_minus_beta1, beta2, one_minus_beta2, neg_step, bc2_sqrt,
                  eps, sign, 0, 0);
}
