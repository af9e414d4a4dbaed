// The importance-weighted NLL's two kernels for CPUs with AVX-512 BF16
// (native_kernels.py builds, loads and calls them).
//
// textvae_score: log p(gold | h) = (W h + b)[gold] - log sum_v exp((W h + b)[v])
// for many rows h, in one pass: bf16 products with fp32 sums (AVX-512 BF16's
// vdpbf16ps), and the log-sum-exp taken online over the vocabulary while
// each tile of logits is still in registers (Milakov & Gimelshein 2018,
// "Online normalizer calculation for softmax"), so no logit ever reaches
// memory.
//
// textvae_lstm_step: one step of the LSTM decoder under every latent sample,
// the recurrent product h W_hh^T with the cell update in its epilogue.
//
// Layout. states: bf16 rows of `hidden` values, row r at states + rows[r] * hidden.
// packed: the weight W (V, H) in bf16, V padded with zero rows to a multiple
// of TILE_COLUMNS, as (V / 16, H / 2, 16, 2): for each group of 16 vocabulary
// entries and each pair of hidden units, the 32 values one vdpbf16ps takes.
// bias: fp32 (V padded, PAD_LOGIT in the padding). weight: the plain bf16 (V, H),
// for the gold logit's dot product.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int MR = 8;                   // rows of a micro-tile
constexpr int GROUPS = 3;               // 16-column groups of a micro-tile: 8 x 48 logits in 24 registers
constexpr int PANEL_GROUPS = 48;        // columns per pass over a block (768: 384 KB of weights at H = 256, in L2)
constexpr int64_t BLOCK_ROWS = 96;      // rows a thread takes at a time
constexpr float START = -1e30f;         // the running maximum before any logit (finite: no inf - inf)

inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }

// Two bf16 values, broadcast to every 32-bit lane (one vdpbf16ps operand).
inline __m512i pair(const uint16_t* p) {
    int32_t both;
    std::memcpy(&both, p, sizeof both);
    return _mm512_set1_epi32(both);
}

// exp(x) in fp32 for x in [-87, 88]: x = n ln2 + r, |r| <= ln2 / 2, e^r by
// its degree-6 Taylor polynomial (relative error below 2e-7 there), times 2^n
// by vscalefps. exp_nonpositive clamps below at -87 (about 1e-38 instead of smaller).
inline __m512 exp_in_range(__m512 x) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2, high part (exact product)
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);       // and the rest
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// The clamps take the constant first: vmaxps/vminps return their second operand
// when either is NaN, so a NaN goes through (as exp(NaN) does) instead of
// becoming exp(-87).
inline __m512 exp_nonpositive(__m512 x) { return exp_in_range(_mm512_max_ps(_mm512_set1_ps(-87.0f), x)); }

// exp(x) for any x (clamped to [-87, 88], where fp32 stays finite and normal).
inline __m512 exp_any(__m512 x) {
    return exp_in_range(_mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x)));
}

inline __m512 sigmoid(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_any(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 tanh_(__m512 x) {  // 2 sigmoid(2x) - 1
    const __m512 two = _mm512_set1_ps(2.0f);
    return _mm512_fmsub_ps(two, sigmoid(_mm512_mul_ps(two, x)), _mm512_set1_ps(1.0f));
}

struct Problem {
    const uint16_t* states;
    const int64_t* rows;
    const int64_t* gold;
    int64_t n;
    const uint16_t* packed;
    const float* bias;
    int64_t groups;  // padded vocabulary / 16, a multiple of GROUPS
    int64_t hidden;  // even
    const uint16_t* weight;
    const float* plain_bias;
    float* out;
};

// One 8 x 48 tile of logits of the rows `row` and the groups from `group`,
// folded into each row's lane-wise running maximum and sum (max_, sum_, 16 a row).
inline void tile(const Problem& p, const uint16_t* const* row, int64_t group, int valid, float* max_, float* sum_) {
    const int64_t pairs = p.hidden / 2;
    __m512 acc[MR][GROUPS];
    for (int j = 0; j < GROUPS; ++j) {
        const __m512 b = _mm512_loadu_ps(p.bias + (group + j) * 16);
        for (int i = 0; i < MR; ++i) acc[i][j] = b;
    }
    const uint16_t* w = p.packed + group * pairs * 32;
    for (int64_t k = 0; k < pairs; ++k) {
        __m512i b[GROUPS];
        for (int j = 0; j < GROUPS; ++j) b[j] = _mm512_loadu_si512(w + (j * pairs + k) * 32);
        for (int i = 0; i < MR; ++i) {
            const __m512i a = pair(row[i] + 2 * k);
            for (int j = 0; j < GROUPS; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(a), as_bh(b[j]));
        }
    }
    for (int i = 0; i < valid; ++i) {
        __m512 m = _mm512_loadu_ps(max_ + i * 16);
        __m512 s = _mm512_loadu_ps(sum_ + i * 16);
        const __m512 top = _mm512_max_ps(acc[i][0], _mm512_max_ps(acc[i][1], acc[i][2]));
        if (_mm512_cmp_ps_mask(top, m, _CMP_GT_OQ)) {  // a new maximum in some lane: rescale its sum
            const __m512 grown = _mm512_max_ps(m, top);
            s = _mm512_mul_ps(s, exp_nonpositive(_mm512_sub_ps(m, grown)));
            m = grown;
            _mm512_storeu_ps(max_ + i * 16, m);
        }
        for (int j = 0; j < GROUPS; ++j) s = _mm512_add_ps(s, exp_nonpositive(_mm512_sub_ps(acc[i][j], m)));
        _mm512_storeu_ps(sum_ + i * 16, s);
    }
}

// The dot product of two bf16 vectors of `length` (even) values, in fp32.
inline float dot(const uint16_t* a, const uint16_t* b, int64_t length) {
    __m512 acc = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= length; k += 32)
        acc = _mm512_dpbf16_ps(acc, as_bh(_mm512_loadu_si512(a + k)), as_bh(_mm512_loadu_si512(b + k)));
    if (k < length) {
        const __mmask32 tail = (__mmask32)((1ull << (length - k)) - 1);
        acc = _mm512_dpbf16_ps(acc, as_bh(_mm512_maskz_loadu_epi16(tail, a + k)),
                               as_bh(_mm512_maskz_loadu_epi16(tail, b + k)));
    }
    return _mm512_reduce_add_ps(acc);
}

// Rows first .. first + count - 1 (count <= BLOCK_ROWS).
void block(const Problem& p, int64_t first, int64_t count, float* max_, float* sum_) {
    std::fill(max_, max_ + count * 16, START);
    std::fill(sum_, sum_ + count * 16, 0.0f);
    for (int64_t panel = 0; panel < p.groups; panel += PANEL_GROUPS) {
        const int64_t end = std::min(p.groups, panel + PANEL_GROUPS);
        for (int64_t r0 = 0; r0 < count; r0 += MR) {
            const int valid = (int)std::min<int64_t>(MR, count - r0);
            const uint16_t* row[MR];
            for (int i = 0; i < MR; ++i) row[i] = p.states + p.rows[first + r0 + std::min(i, valid - 1)] * p.hidden;
            for (int64_t group = panel; group < end; group += GROUPS)
                tile(p, row, group, valid, max_ + r0 * 16, sum_ + r0 * 16);
        }
    }
    for (int64_t i = 0; i < count; ++i) {
        const __m512 m = _mm512_loadu_ps(max_ + i * 16);
        const float top = _mm512_reduce_max_ps(m);
        const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(sum_ + i * 16),
                                            exp_nonpositive(_mm512_sub_ps(m, _mm512_set1_ps(top))));
        const float lse = top + std::log(_mm512_reduce_add_ps(scaled));
        const int64_t gold = p.gold[first + i];
        const uint16_t* h = p.states + p.rows[first + i] * p.hidden;
        p.out[first + i] = dot(h, p.weight + gold * p.hidden, p.hidden) + p.plain_bias[gold] - lse;
    }
}

// ------------------------------------------------------------- LSTM step
constexpr int STEP_MR = 6;             // rows of a micro-tile: 6 x (4 gates x 16 units) in 24 registers
constexpr int64_t STEP_BLOCK = 48;     // rows a thread takes at a time

struct Step {
    const uint16_t* h;       // bf16 h_{t-1}, row r at h + r * h_stride
    int64_t h_stride;
    const uint16_t* z;       // bf16 latent samples (rows, latent), or none (latent == 0)
    int64_t latent;          // even
    const uint16_t* packed;  // [W_hh | W_z] (4H, H + latent) in bf16, rows reordered to (unit group, gate, 16), packed
    int64_t hidden;          // H, a multiple of 16
    const float* word;       // (B, 4H) fp32: the words' share of the gates at this step, biases included
    int64_t batch;           // B: row r is sentence r % B
    float* c;                // (rows, H) fp32, updated in place
    uint16_t* out;           // bf16 h_t, row r at out + r * out_stride
    int64_t out_stride;
    int64_t rows;
};

// Rows r0 .. r0 + valid - 1, hidden units 16 u .. 16 u + 15: the four gates,
// [h_{t-1}, z] [W_hh | W_z]^T plus the words' share, then c = s(f) c + s(i) tanh(g)
// and h = s(o) tanh(c) (nn.LSTM's gate order i, f, g, o; Hochreiter &
// Schmidhuber 1997). z's share is recomputed each step: cheaper than
// streaming a (rows, 4H) table of it through the cache every step.
inline void step_tile(const Step& p, int64_t r0, int valid, int64_t u) {
    const int64_t own = p.hidden / 2, pairs = (p.hidden + p.latent) / 2, width = 4 * p.hidden;
    const uint16_t* row[STEP_MR];
    const uint16_t* zrow[STEP_MR];
    for (int i = 0; i < STEP_MR; ++i) {
        const int64_t r = r0 + std::min(i, valid - 1);
        row[i] = p.h + r * p.h_stride;
        zrow[i] = p.latent ? p.z + r * p.latent : row[i];
    }
    __m512 acc[STEP_MR][4];
    for (int i = 0; i < STEP_MR; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
    const uint16_t* w = p.packed + u * 4 * pairs * 32;
    for (int part = 0; part < 2; ++part) {
        const uint16_t* const* from = part == 0 ? row : zrow;  // h's pairs, then z's
        const int64_t start = part == 0 ? 0 : own, end = part == 0 ? own : pairs;
        for (int64_t k = start; k < end; ++k) {
            __m512i b[4];
            for (int j = 0; j < 4; ++j) b[j] = _mm512_loadu_si512(w + (j * pairs + k) * 32);
            for (int i = 0; i < STEP_MR; ++i) {
                const __m512i a = pair(from[i] + 2 * (k - start));
                for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(a), as_bh(b[j]));
            }
        }
    }
    for (int i = 0; i < valid; ++i) {
        const int64_t r = r0 + i;
        const float* word = p.word + (r % p.batch) * width + u * 16;
        __m512 gate[4];
        for (int j = 0; j < 4; ++j) gate[j] = _mm512_add_ps(acc[i][j], _mm512_loadu_ps(word + j * p.hidden));
        float* c = p.c + r * p.hidden + u * 16;
        const __m512 cell = _mm512_fmadd_ps(sigmoid(gate[1]), _mm512_loadu_ps(c),
                                            _mm512_mul_ps(sigmoid(gate[0]), tanh_(gate[2])));
        _mm512_storeu_ps(c, cell);
        const __m512 h = _mm512_mul_ps(sigmoid(gate[3]), tanh_(cell));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p.out + r * p.out_stride + u * 16),
                            (__m256i)_mm512_cvtneps_pbh(h));  // round to nearest even, as .to(bfloat16)
    }
}

void step_block(const Step& p, int64_t first, int64_t count) {
    for (int64_t r0 = first; r0 < first + count; r0 += STEP_MR) {
        const int valid = (int)std::min<int64_t>(STEP_MR, first + count - r0);
        for (int64_t u = 0; u < p.hidden / 16; ++u) step_tile(p, r0, valid, u);
    }
}

}  // namespace

extern "C" {

int textvae_score_tile_columns() { return 16 * GROUPS; }

// out[r] = log p(gold[r] | row r) for r < n, on `threads` threads. Returns 0,
// or 1 where the hidden size is odd (nothing is written).
int textvae_score(const uint16_t* states, const int64_t* rows, const int64_t* gold, int64_t n,
                  const uint16_t* packed, const float* bias, int64_t padded_vocab, int64_t hidden,
                  const uint16_t* weight, const float* plain_bias, float* out, int threads) {
    if (hidden % 2 || padded_vocab % (16 * GROUPS)) return 1;
    if (n <= 0) return 0;
    const Problem p{states, rows, gold, n, packed, bias, padded_vocab / 16, hidden, weight, plain_bias, out};
    std::atomic<int64_t> next(0);
    const int64_t wanted = std::min<int64_t>(std::max(threads, 1), (n + BLOCK_ROWS - 1) / BLOCK_ROWS);
    // On the process's OpenMP pool (torch's own, libgomp), so that its
    // threads, still spinning after torch's last operation, do this work
    // instead of competing with threads of ours for the cores.
#pragma omp parallel num_threads(wanted)
    {
        std::vector<float> max_(BLOCK_ROWS * 16), sum_(BLOCK_ROWS * 16);
        for (int64_t first = next.fetch_add(BLOCK_ROWS); first < p.n; first = next.fetch_add(BLOCK_ROWS))
            block(p, first, std::min(BLOCK_ROWS, p.n - first), max_.data(), sum_.data());
    }
    return 0;
}

// One step for `rows` rows (see Step). Returns 0, or 1 where H is not a
// multiple of 16 or the latent size is odd (nothing is written).
int textvae_lstm_step(const uint16_t* h, int64_t h_stride, const uint16_t* z, int64_t latent, const uint16_t* packed,
                      int64_t hidden, const float* word, int64_t batch, float* c, uint16_t* out, int64_t out_stride,
                      int64_t rows, int threads) {
    if (hidden % 16 || latent % 2) return 1;
    if (rows <= 0) return 0;
    const Step p{h, h_stride, z, latent, packed, hidden, word, batch, c, out, out_stride, rows};
    std::atomic<int64_t> next(0);
    const int64_t wanted = std::min<int64_t>(std::max(threads, 1), (rows + STEP_BLOCK - 1) / STEP_BLOCK);
#pragma omp parallel num_threads(wanted)
    for (int64_t first = next.fetch_add(STEP_BLOCK); first < p.rows; first = next.fetch_add(STEP_BLOCK))
        step_block(p, first, std::min(STEP_BLOCK, p.rows - first));
    return 0;
}

}  // extern "C"
