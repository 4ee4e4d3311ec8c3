/* lstm_body.h: the LSTM training step for one dtype.
 *
 * Included twice by lstm.c: with real = float (names end in _f32) and with
 * real = double (_f64). FN(name) appends the suffix; VL is the number of reals
 * in a vector of the micro-kernel (LSTM_VECTOR_BYTES, lstm.c); ACT_TANH / ACT_SIGMOID are the activations and REAL_SQRT
 * the square root in the dtype (lstm.c).
 *
 * Notation as in the reference: B batch, T steps, D input width, H hidden,
 * G = 4H gate columns (order i, f, g, o), O outputs, L layers, and per layer
 *
 *     z_t = x_t @ W_x + h_{t-1} @ W_h + b
 *     i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
 *     c_t = f * c_{t-1} + i * g           h_t = o * tanh(c_t)
 *
 * Buffers of one shard (time-major, so one step's rows are contiguous; bm rows
 * per shard, of which the first nb are real and the rest zero padding):
 *     xs  (T, bm, D)          the shard's rows of x
 *     hs  (L, T+1, bm, H)     h_0 = 0, h_1 .. h_T of each layer
 *     cs  (L, T+1, bm, H)     c_0 = 0, c_1 .. c_T
 *     z   (L, T, bm, Gp)      z_t, then the activated gates, then dz (in place)
 *     tc  (L, T, bm, H)       tanh(c_t)
 *     yout (Tout, bm, O)      head outputs (Tout = T many-to-many, 1 many-to-one)
 *     dy  (Tout, bm, Op)      dLoss/dy
 *     dh  (T, bm, H)          dLoss/dh_t arriving from above (head or next layer)
 *     dhn, dcn (bm, H)        dLoss/dh_t and dLoss/dc_t through step t+1
 *     hd  (L-1+m2m, T, bm, H) with dropout: h_1 .. h_T of each layer but the top (and of the
 *                             top, many-to-many), through the mask of the site above
 *     grad (P)                this shard's gradient, flat layout
 * Gp and Op are 4H and O rounded up to an odd number of micro-tile widths (NR):
 * z and dy are read directly as the B operand of the weight-gradient products,
 * which reads up to a multiple of NR columns, and a row stride that is an odd
 * number of cache lines spreads the rows over all cache sets.
 */

#define NR (2 * VL) /* columns of a micro-tile: two vectors */
#define MR 6        /* rows of a micro-tile: 6 x 2 vector accumulators = 12 registers */
#define KC 256      /* depth of one pass of the micro-kernel: its B panel (KC x NR) stays in L1 */
#define MC 96       /* rows of A per block (a multiple of MR) */

typedef real FN(vec) __attribute__((vector_size(VL * sizeof(real))));

static int64_t FN(panel_width)(void) { return NR; }

/* Leading dimension for a buffer read directly as a B operand (see above). */
static int64_t FN(padded_width)(int64_t n)
{
    int64_t panels = ceil_div(n, NR);
    return (panels % 2 ? panels : panels + 1) * NR;
}

/* ======================= matrix products =======================
 *
 * C (M x N) = A (M x K) @ B (K x N), or C += A @ B.
 *
 * A is read through strides: a(i, k) = A[i * ars + k * acs], so A may be a
 * row-major matrix (ars = lda, acs = 1) or the transpose of one (ars = 1,
 * acs = lda: the weight gradients h^T @ dz). A row-major A is read in place
 * (the micro-kernel keeps MR row pointers and steps them all by acs); a
 * transposed one is copied into MR-row tiles first (pack_a), as it is reused
 * by every panel of B and would otherwise touch a new cache line per k.
 *
 * B is either packed by pack_b (below: zero-padded to Np = round_up(N, NR)
 * columns, cut into KC-row slices, each slice stored panel after panel, each
 * panel KC x NR contiguous, so one pass of the driver reads one sequential
 * stream), or read in place as a row-major matrix with row stride ldb, which
 * then needs at least round_up(N, NR) readable columns in every row.
 *
 * Loop order (Goto's): K in KC slices, M in MC blocks, then every NR-column
 * panel of B against every MR-row tile of A, so a B panel slice is reused from
 * L1 by all row tiles of the block. The last 1..4 rows of a block use a 4-row
 * tile (a batch shard of 16 rows is 6 + 6 + 4, not 6 + 6 + 6), the last 1 or 2 rows a
 * 1- or 2-row one.
 */

/* Packs panel p (columns p*NR .. p*NR+NR-1) of B, b(k, j) = B[k * brs + j * bcs]. */
static void FN(pack_panel)(int64_t K, int64_t N, const real *B, int64_t brs, int64_t bcs, real *restrict dst, int64_t p)
{
    const int64_t Np = round_up(N, NR), j0 = p * NR, n = min64(NR, N - j0);
    for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = min64(KC, K - pc);
        real *restrict out = dst + pc * Np + j0 * kc; /* slice pc, panel p: kc x NR */
        if (n < NR) memset(out, 0, (size_t)(kc * NR) * sizeof(real));
        if (bcs == 1) /* rows of B are contiguous: copy NR values per k */
            for (int64_t k = 0; k < kc; k++)
                for (int64_t jj = 0; jj < n; jj++) out[k * NR + jj] = B[(pc + k) * brs + j0 + jj];
        else /* a transpose: read each column of the panel as one contiguous run */
            for (int64_t jj = 0; jj < n; jj++)
                for (int64_t k = 0; k < kc; k++) out[k * NR + jj] = B[(pc + k) * brs + (j0 + jj) * bcs];
    }
}

/* The whole of B (K x N), zero-padded to Np = round_up(N, NR) columns, as KC-row
 * slices, each slice panel after panel, each panel KC x NR contiguous. */
static void FN(pack_b)(int64_t K, int64_t N, const real *B, int64_t brs, int64_t bcs, real *dst)
{
    for (int64_t p = 0; p * NR < N; p++) FN(pack_panel)(K, N, B, brs, bcs, dst, p);
}

/* The same, called by every thread of a parallel region: the panels are shared out,
 * and nobody waits at the end (nowait), so the next matrix starts at once. */
static void FN(pack_b_shared)(int64_t K, int64_t N, const real *B, int64_t brs, int64_t bcs, real *dst)
{
    const int64_t panels = ceil_div(N, NR);
#pragma omp for schedule(static) nowait
    for (int64_t p = 0; p < panels; p++) FN(pack_panel)(K, N, B, brs, bcs, dst, p);
}

INLINE FN(vec) FN(loadv)(const real *p)
{
    FN(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void FN(storev)(real *p, FN(vec) v) { memcpy(p, &v, sizeof v); }

/* The micro-kernel: an R x NR tile of C (R = MR, or 4 for the last rows of a
 * block) from kc steps of broadcast-FMA. Rows past m re-read row m-1 (never past
 * the end of A) and are not stored. R is a constant at every call, so the
 * loops over rows unroll and the accumulators live in registers. */
INLINE void FN(micro)(const int R, int64_t kc, const real *a, int64_t ars, int64_t acs, int64_t m, const real *b,
                      int64_t ldb, real *c, int64_t ldc, int64_t n, int add)
{
    typedef FN(vec) vec;
    /* A 1- or 2-row tile has only 2 or 4 accumulators: too few chains to hide the FMA
     * latency. It keeps KP = 4 / R sets of them, for consecutive k in turn, added up at
     * the end (in a fixed order), so 8 independent chains are in flight in every tile. */
    const int KP = R >= 4 ? 1 : 4 / R; /* R is a constant at every call: so is KP */
    const real *ap[MR];
    for (int i = 0; i < R; i++) ap[i] = a + min64(i, m - 1) * ars;
    vec acc[MR][2], part[3][MR][2];
    for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = (vec){0};
    for (int p = 0; p < KP - 1; p++)
        for (int i = 0; i < R; i++) part[p][i][0] = part[p][i][1] = (vec){0};
    int64_t k = 0;
    for (; KP > 1 && k + KP <= kc; k += KP) {
#pragma GCC unroll 4
        for (int p = 0; p < KP; p++) {
            const vec b0 = FN(loadv)(b + (k + p) * ldb), b1 = FN(loadv)(b + (k + p) * ldb + VL);
            const int64_t ka = (k + p) * acs;
#pragma GCC unroll 2
            for (int i = 0; i < R; i++) {
                const real x = ap[i][ka];
                if (p == 0) {
                    acc[i][0] += x * b0;
                    acc[i][1] += x * b1;
                } else {
                    part[p - 1][i][0] += x * b0;
                    part[p - 1][i][1] += x * b1;
                }
            }
        }
    }
    for (; k < kc; k++) {
        const vec b0 = FN(loadv)(b + k * ldb), b1 = FN(loadv)(b + k * ldb + VL);
        const int64_t ka = k * acs;
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) {
            const real x = ap[i][ka];
            acc[i][0] += x * b0;
            acc[i][1] += x * b1;
        }
    }
    for (int p = 0; p < KP - 1; p++)
        for (int i = 0; i < R; i++) {
            acc[i][0] += part[p][i][0];
            acc[i][1] += part[p][i][1];
        }
    if (m == R && n == NR) {
        for (int i = 0; i < R; i++) {
            real *ci = c + i * ldc;
            if (add) {
                FN(storev)(ci, FN(loadv)(ci) + acc[i][0]);
                FN(storev)(ci + VL, FN(loadv)(ci + VL) + acc[i][1]);
            } else {
                FN(storev)(ci, acc[i][0]);
                FN(storev)(ci + VL, acc[i][1]);
            }
        }
    } else {
        real tile[MR][NR];
        for (int i = 0; i < R; i++) {
            FN(storev)(tile[i], acc[i][0]);
            FN(storev)(tile[i] + VL, acc[i][1]);
        }
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] = add ? c[i * ldc + j] + tile[i][j] : tile[i][j];
    }
}

/* Copies rows ic..ic+mc, columns pc..pc+kc of A into MR-row tiles, each kc x MR
 * contiguous, so the micro-kernel reads A as one stream (used when A is a
 * transpose, whose MR values for one k sit in a different cache line per k). */
static void FN(pack_a)(int64_t mc, int64_t kc, const real *A, int64_t ars, int64_t acs, real *restrict dst)
{
    for (int64_t ir = 0; ir < mc; ir += MR) {
        const int64_t m = min64(MR, mc - ir);
        real *tile = dst + ir * kc;
        for (int64_t k = 0; k < kc; k++)
            for (int64_t i = 0; i < MR; i++) tile[k * MR + i] = i < m ? A[(ir + i) * ars + k * acs] : (real)0;
    }
}

/* apack: room for MC x KC reals, or NULL (then A is never packed). With a packed B, ldb
 * is the padded width of the whole packed matrix (0: round_up(N, NR)) and j0 its first
 * column used here (a multiple of NR): the product is then with columns j0 .. j0+N-1. */
HOT static void FN(gemm)(int64_t M, int64_t N, int64_t K, const real *A, int64_t ars, int64_t acs, const real *B,
                         int64_t ldb, int64_t j0, int packed, real *C, int64_t ldc, int add, real *apack)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!add)
            for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(real));
        return;
    }
    const int64_t Np = packed && ldb > 0 ? ldb : round_up(N, NR);
    const int pack_a = apack && acs != 1 && N > NR; /* a transposed A, reused by several panels */
    for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = min64(KC, K - pc);
        const int acc = add || pc > 0;
        for (int64_t ic = 0; ic < M; ic += MC) {
            const int64_t mc = min64(MC, M - ic);
            const real *a = A + ic * ars + pc * acs;
            int64_t a_rs = ars, a_cs = acs, a_ts = MR * ars; /* strides of rows, columns, tiles */
            if (pack_a) {
                FN(pack_a)(mc, kc, a, ars, acs, apack);
                a = apack, a_rs = 1, a_cs = MR, a_ts = MR * kc;
            }
            for (int64_t jc = 0; jc < N; jc += NR) {
                /* this slice of panel jc / NR: packed, or in place */
                const real *bp = packed ? B + pc * Np + (j0 + jc) * kc : B + pc * ldb + jc;
                const int64_t ldbp = packed ? NR : ldb, n = min64(NR, N - jc);
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    const int64_t m = min64(MR, mc - ir);
                    const real *at = a + (ir / MR) * a_ts;
                    real *ct = C + (ic + ir) * ldc + jc;
                    /* the smallest tile that holds the last rows: a one-row product (a batch
                     * of one, a shard of one row) must not pay for four */
                    if (m > 4)
                        FN(micro)(MR, kc, at, a_rs, a_cs, m, bp, ldbp, ct, ldc, n, acc);
                    else if (m > 2)
                        FN(micro)(4, kc, at, a_rs, a_cs, m, bp, ldbp, ct, ldc, n, acc);
                    else if (m == 2)
                        FN(micro)(2, kc, at, a_rs, a_cs, m, bp, ldbp, ct, ldc, n, acc);
                    else
                        FN(micro)(1, kc, at, a_rs, a_cs, m, bp, ldbp, ct, ldc, n, acc);
                }
            }
        }
    }
}

/* Products with a packed B (K x N as pack_b left it) and with a plain one. */
INLINE void FN(gemm_packed)(int64_t M, int64_t N, int64_t K, const real *A, int64_t ars, int64_t acs,
                            const real *Bp, real *C, int64_t ldc, int add)
{
    FN(gemm)(M, N, K, A, ars, acs, Bp, 0, 0, 1, C, ldc, add, NULL);
}

/* The same with columns j0 .. j0+N-1 of a packed B whose padded width is Np. */
INLINE void FN(gemm_packed_cols)(int64_t M, int64_t N, int64_t K, const real *A, int64_t ars, int64_t acs,
                                 const real *Bp, int64_t Np, int64_t j0, real *C, int64_t ldc, int add)
{
    FN(gemm)(M, N, K, A, ars, acs, Bp, Np, j0, 1, C, ldc, add, NULL);
}

INLINE void FN(gemm_plain)(int64_t M, int64_t N, int64_t K, const real *A, int64_t ars, int64_t acs,
                           const real *B, int64_t ldb, real *C, int64_t ldc, int add, real *apack)
{
    FN(gemm)(M, N, K, A, ars, acs, B, ldb, 0, 0, C, ldc, add, apack);
}

/* ======================= the workspace ======================= */

typedef struct {
    real *xs, *hs, *cs, *z, *tc, *yout, *dy, *dh, *dhn, *dcn, *grad;
    real *hl;    /* (bm, H) many-to-one with lengths or dropout: the top h at each row's last step, then its dh */
    real *hd;    /* (L-1+m2m, T, bm, H) a model with dropout: each layer's masked output (HD(site)); else NULL */
    real *pk;    /* (T * bm, max(D, H)) with lengths: the rows that took each step, packed (weight_grads_packed) */
    real *apack; /* (MC, KC) A tiles of the weight-gradient products */
} FN(shard);

typedef struct {
    int64_t B, T, D, H, O, L, G, Gp, Op, Tout, S, bm, P, Pstride, nchunks, threads;
    int m2m, xent;
    int team; /* 1: one shard, the threads share out its hidden units (few rows per thread) */
    const int64_t *offs;
    const int64_t *sym; /* dims.x_symbols: one-hot input as symbol ids (B, T), or NULL */
    const int64_t *len; /* dims.lengths (B,), longest first, or NULL: every row takes T steps */
    const real *h0, *c0; /* dims.h0, c0 (L, B, H), or NULL: zeros */
    real *hn, *cn;       /* dims.hn, cn (L, B, H), or NULL */
    int reuse_packed;    /* dims.reuse_packed */
    int drop;            /* 1: this call applies dropout (dims.drop_keys set) */
    const uint32_t *dkeys, *drows; /* dims.drop_keys (L+1,), drop_rows (B,) */
    uint32_t dthr;       /* dims.drop_threshold */
    real dscale;         /* dims.drop_scale */
    real **pwx, **pwh, **pwxt, **pwht; /* per layer: packed W_x, W_h, W_x^T (l > 0), W_h^T */
    real **pwxg, **pwhg;               /* team: per layer and gate (4 l + g) packed W_x, W_h columns of the gate */
    real *pwy, *pwyt;                  /* packed W_y and W_y^T */
    real **tapack;                     /* team: one (MC, KC) A-tile buffer per thread */
    FN(shard) *sh;
    double *loss; /* (S) each shard's sum of loss terms */
    double *sq;   /* (nchunks) sum of squared gradient per chunk (for clipping) */
} FN(work);

/* Fills w's sizes and, if base != NULL, its pointers. Returns the bytes needed
 * (without alignment slack), or -1 if that is absurdly large. */
static int64_t FN(carve)(const lstm_dims *d, char *base, FN(work) *w)
{
    const int64_t es = (int64_t)sizeof(real);
    w->B = d->batch, w->T = d->steps, w->D = d->input_size, w->H = d->hidden_size;
    w->O = d->output_size, w->L = d->layers, w->threads = d->threads;
    w->m2m = d->many_to_many != 0, w->xent = d->xent != 0;
    w->Tout = w->m2m ? w->T : 1;
    shard_plan(d, NR, &w->S, &w->bm, &w->team);
    /* z is read in place as a B operand from any gate's first column in team mode: room for a
     * whole panel past the last gate */
    w->G = 4 * w->H, w->Gp = FN(padded_width)(w->G + (w->team ? NR : 0)), w->Op = FN(padded_width)(w->O);
    w->P = (w->D + w->H + 1) * w->G + (w->L - 1) * (2 * w->H + 1) * w->G + (w->H + 1) * w->O;
    w->Pstride = round_up(w->P, ALIGN / es); /* private rows on separate cache lines */
    w->nchunks = ceil_div(w->P, CHUNK);
    const int64_t T = w->T, H = w->H, G = w->G, L = w->L, S = w->S, bm = w->bm, D = w->D;

    arena a = {base, 0, 0};
    w->pwx = take(&a, sizeof(real *), L, 1, 1, 1);
    w->pwh = take(&a, sizeof(real *), L, 1, 1, 1);
    w->pwxt = take(&a, sizeof(real *), L, 1, 1, 1);
    w->pwht = take(&a, sizeof(real *), L, 1, 1, 1);
    for (int64_t l = 0; l < L; l++) {
        const int64_t Dl = l == 0 ? D : H;
        real *px = take(&a, es, Dl, round_up(G, NR), 1, 1);
        real *ph = take(&a, es, H, round_up(G, NR), 1, 1);
        real *pxt = l > 0 ? take(&a, es, G, round_up(Dl, NR), 1, 1) : NULL;
        real *pht = take(&a, es, G, round_up(H, NR), 1, 1);
        if (base && !a.too_big) w->pwx[l] = px, w->pwh[l] = ph, w->pwxt[l] = pxt, w->pwht[l] = pht;
    }
    w->pwxg = w->team ? take(&a, sizeof(real *), 4 * L, 1, 1, 1) : NULL;
    w->pwhg = w->team ? take(&a, sizeof(real *), 4 * L, 1, 1, 1) : NULL;
    for (int64_t l = 0; w->team && l < L; l++)
        for (int g = 0; g < 4; g++) {
            real *px = take(&a, es, l == 0 ? D : H, round_up(H, NR), 1, 1);
            real *ph = take(&a, es, H, round_up(H, NR), 1, 1);
            if (base && !a.too_big) w->pwxg[4 * l + g] = px, w->pwhg[4 * l + g] = ph;
        }
    w->tapack = w->team ? take(&a, sizeof(real *), w->threads, 1, 1, 1) : NULL;
    for (int64_t t = 0; w->team && t < w->threads; t++) {
        real *ap = take(&a, es, MC, KC, 1, 1);
        if (base && !a.too_big) w->tapack[t] = ap;
    }
    w->pwy = take(&a, es, H, round_up(w->O, NR), 1, 1);
    w->pwyt = take(&a, es, w->O, round_up(H, NR), 1, 1);
    w->loss = take(&a, sizeof(double), S, 1, 1, 1);
    w->sq = take(&a, sizeof(double), w->nchunks, 1, 1, 1);
    w->sh = take(&a, sizeof(FN(shard)), S, 1, 1, 1);
    for (int64_t s = 0; s < S; s++) {
        FN(shard) sh;
        sh.xs = take(&a, es, T, bm, D, 1);
        sh.hs = take(&a, es, L, T + 1, bm, H);
        sh.cs = take(&a, es, L, T + 1, bm, H);
        sh.z = take(&a, es, L, T, bm, w->Gp);
        sh.tc = take(&a, es, L, T, bm, H);
        sh.yout = take(&a, es, w->Tout, bm, w->O, 1);
        sh.dy = take(&a, es, w->Tout, bm, w->Op, 1);
        sh.dh = take(&a, es, T, bm, H, 1);
        sh.dhn = take(&a, es, bm, H, 1, 1);
        sh.dcn = take(&a, es, bm, H, 1, 1);
        sh.hl = take(&a, es, bm, H, 1, 1);
        const int64_t sites = L - 1 + w->m2m; /* sequences masked by dropout (a many-to-one head's: in hl) */
        sh.hd = d->dropout && sites > 0 ? take(&a, es, sites, T, bm, H) : NULL;
        sh.pk = take(&a, es, T, bm, max64(D, H), 1);
        sh.grad = take(&a, es, w->Pstride, 1, 1, 1);
        sh.apack = take(&a, es, MC, KC, 1, 1);
        if (base && !a.too_big) w->sh[s] = sh;
    }
    return a.too_big ? -1 : a.used;
}

static int FN(parallel_plan)(const lstm_dims *d)
{
    int64_t shards, rows;
    int team;
    shard_plan(d, NR, &shards, &rows, &team);
    return team ? LSTM_PAR_UNITS : LSTM_PAR_SHARDS;
}

static int64_t FN(workspace_bytes)(const lstm_dims *d)
{
    FN(work) w;
    const int64_t used = FN(carve)(d, NULL, &w);
    return used < 0 ? -1 : used + ALIGN;
}

/* Checks everything, then carves the workspace. */
static int FN(setup)(const lstm_dims *d, const int64_t *offs, int64_t n_params, void *ws, int64_t ws_bytes,
                     FN(work) *w)
{
    int err = check_dims(d);
    if (err) return err;
    if ((err = check_layout(d, offs, n_params))) return err;
    const int64_t need = FN(carve)(d, NULL, w);
    if (need < 0) return LSTM_EDIMS;
    char *base = arena_base(ws, ws_bytes, need);
    if (!base) return LSTM_EWORKSPACE;
    FN(carve)(d, base, w);
    w->offs = offs;
    w->sym = d->x_symbols;
    w->len = d->lengths;
    w->h0 = d->h0, w->c0 = d->c0, w->hn = d->hn, w->cn = d->cn;
    w->reuse_packed = d->reuse_packed != 0;
    if (!w->h0 != !w->c0 || !w->hn != !w->cn) return LSTM_EARG;
    w->drop = d->drop_keys != NULL;
    w->dkeys = d->drop_keys, w->drows = d->drop_rows, w->dthr = d->drop_threshold, w->dscale = (real)d->drop_scale;
    if (w->drop && (!d->dropout || !w->drows || !(d->drop_scale >= 1.0 && isfinite(d->drop_scale))))
        return LSTM_EARG; /* (a workspace sized without room for the masked outputs, or no rows) */
    for (int64_t b = 0; w->len && b < w->B; b++) /* each shard's rows longest first */
        if (w->len[b] < 1 || w->len[b] > w->T || (b % w->bm > 0 && w->len[b] > w->len[b - 1])) return LSTM_ELENGTHS;
    if (w->sym)
        for (int64_t k = 0; k < w->B * w->T; k++)
            if (w->sym[k] < 0 || w->sym[k] >= w->D) return LSTM_ECLASS;
    return LSTM_OK;
}

/* Shard s's lengths (NULL: T for every row), one row's, and its longest row's: no step of the
 * shard runs past that one. */
INLINE const int64_t *FN(shard_len)(const FN(work) *w, int64_t s) { return w->len ? w->len + s * w->bm : NULL; }
INLINE int64_t FN(row_len)(const FN(work) *w, int64_t s, int64_t r) { return w->len ? w->len[s * w->bm + r] : w->T; }
INLINE int64_t FN(shard_steps)(const FN(work) *w, int64_t s) { return FN(row_len)(w, s, 0); }

static void FN(release)(const FN(work) *w, void *ws, int64_t ws_bytes)
{
    (void)w;
    (void)ws;
    (void)ws_bytes;
    UNPOISON(ws, ws_bytes); /* the caller may reuse or free the block as it likes */
}

/* Packs every weight matrix once per call, for all shards to share (read-only);
 * all threads share out the panels of each matrix in turn. */
static void FN(pack_weights)(const FN(work) *w, const real *theta, int backward)
{
    const int64_t H = w->H, G = w->G, L = w->L, O = w->O;
    const int64_t *offs = w->offs;
#pragma omp parallel num_threads(w->threads)
    {
        for (int64_t l = 0; l < L; l++) {
            const int64_t Dl = l == 0 ? w->D : H;
            const real *Wx = theta + offs[3 * l], *Wh = theta + offs[3 * l + 1];
            const int pack_x = !(l == 0 && w->sym); /* one-hot input reads rows of W_x as they are */
            if (!w->team) { /* (the team reads them gate by gate, below) */
                if (pack_x) FN(pack_b_shared)(Dl, G, Wx, G, 1, w->pwx[l]); /* W_x (D_l, 4H) */
                FN(pack_b_shared)(H, G, Wh, G, 1, w->pwh[l]);              /* W_h (H, 4H) */
            }
            for (int g = 0; w->team && g < 4; g++) { /* each gate's H columns on their own */
                if (pack_x) FN(pack_b_shared)(Dl, H, Wx + g * H, G, 1, w->pwxg[4 * l + g]);
                FN(pack_b_shared)(H, H, Wh + g * H, G, 1, w->pwhg[4 * l + g]);
            }
            if (backward && l > 0) FN(pack_b_shared)(G, Dl, Wx, 1, G, w->pwxt[l]); /* W_x^T (4H, D_l) */
            if (backward) FN(pack_b_shared)(G, H, Wh, 1, G, w->pwht[l]);           /* W_h^T (4H, H) */
        }
        const real *Wy = theta + offs[3 * L];
        FN(pack_b_shared)(H, O, Wy, O, 1, w->pwy);                 /* W_y (H, O) */
        if (backward) FN(pack_b_shared)(O, H, Wy, 1, O, w->pwyt); /* W_y^T (O, H) */
    }
}

/* ======================= pointwise gate math ======================= */

/* One step of one layer, forward, rows 0..nb-1: z holds x_t W_x + h_{t-1} W_h
 * (row stride ldz); adds b, activates (i, f, g, o overwrite z) and writes c_t,
 * tanh(c_t), h_t. Four short loops per row rather than one long one: each
 * activation is a chain of ~20 dependent operations, and short loop bodies let
 * the CPU overlap many iterations; restrict lets the compiler vectorise. */
INLINE void FN(sigmoid_inplace)(int64_t n, real *restrict z, const real *restrict b)
{
    for (int64_t j = 0; j < n; j++) z[j] = ACT_SIGMOID(z[j] + b[j]);
}

INLINE void FN(tanh_inplace)(int64_t n, real *restrict z, const real *restrict b)
{
    for (int64_t j = 0; j < n; j++) z[j] = ACT_TANH(z[j] + b[j]);
}

INLINE void FN(cell_forward)(int64_t H, const real *restrict i, const real *restrict f, const real *restrict g,
                             const real *restrict o, const real *restrict c_prev, real *restrict c_new,
                             real *restrict tc, real *restrict h)
{
    for (int64_t j = 0; j < H; j++) {
        const real c = f[j] * c_prev[j] + i[j] * g[j]; /* c_t = f * c_{t-1} + i * g */
        const real t = ACT_TANH(c);
        c_new[j] = c;
        tc[j] = t;
        h[j] = o[j] * t; /* h_t = o * tanh(c_t) */
    }
}

/* Hidden units u0 .. u1-1 of every row (all of them: 0, H). */
HOT static void FN(gates_forward)(int64_t nb, int64_t H, int64_t u0, int64_t u1, real *z, int64_t ldz, const real *b,
                                  const real *c_prev, real *c_new, real *tc, real *h)
{
    const int64_t n = u1 - u0;
    for (int64_t r = 0; r < nb; r++) {
        real *zr = z + r * ldz + u0;
        const int64_t cr = r * H + u0;
        if (n == H) {
            FN(sigmoid_inplace)(2 * H, zr, b); /* i = sigmoid(z_i), f = sigmoid(z_f) in one pass */
        } else {
            FN(sigmoid_inplace)(n, zr, b + u0);         /* i */
            FN(sigmoid_inplace)(n, zr + H, b + H + u0); /* f */
        }
        FN(tanh_inplace)(n, zr + 2 * H, b + 2 * H + u0);    /* g = tanh(z_g) */
        FN(sigmoid_inplace)(n, zr + 3 * H, b + 3 * H + u0); /* o = sigmoid(z_o) */
        FN(cell_forward)(n, zr, zr + H, zr + 2 * H, zr + 3 * H, c_prev + cr, c_new + cr, tc + cr, h + cr);
    }
}

/* One step of one layer, backward (the reference's layer_backward, fused):
 *     dh = dh_out_t + dh_next           dc = dh * o * (1 - tanh_c^2) + dc_next
 *     dz_i = dc * g * i * (1 - i)       dz_f = dc * c_{t-1} * f * (1 - f)
 *     dz_g = dc * i * (1 - g^2)         dz_o = dh * tanh_c * o * (1 - o)
 *     dc_next = dc * f
 * dz overwrites the stored gates. dhn and dcn are zero at the last step. */
INLINE void FN(gates_backward_row)(int64_t H, real *restrict zi, real *restrict zf, real *restrict zg,
                                   real *restrict zo, const real *restrict c_prev, const real *restrict tc,
                                   const real *restrict dh, const real *restrict dhn, real *restrict dcn)
{
    const real one = 1;
    for (int64_t j = 0; j < H; j++) {
        const real i = zi[j], f = zf[j], g = zg[j], o = zo[j], t = tc[j];
        const real d_h = dh[j] + dhn[j];
        const real d_c = d_h * o * (one - t * t) + dcn[j];
        zi[j] = d_c * g * i * (one - i);
        zf[j] = d_c * c_prev[j] * f * (one - f);
        zg[j] = d_c * i * (one - g * g);
        zo[j] = d_h * t * o * (one - o);
        dcn[j] = d_c * f;
    }
}

/* Hidden units u0 .. u1-1 of every row (all of them: 0, H). */
HOT static void FN(gates_backward)(int64_t nb, int64_t H, int64_t u0, int64_t u1, real *z, int64_t ldz,
                                   const real *c_prev, const real *tc, const real *dh, const real *dhn, real *dcn)
{
    for (int64_t r = 0; r < nb; r++) {
        real *zr = z + r * ldz + u0;
        const int64_t cr = r * H + u0;
        FN(gates_backward_row)(u1 - u0, zr, zr + H, zr + 2 * H, zr + 3 * H, c_prev + cr, tc + cr, dh + cr, dhn + cr,
                               dcn + cr);
    }
}

/* db = column sums of dz over the shard's rows (in row order); with nx > 0 also
 * dW_x = in^T dz for an input only nx wide, in the same pass over dz. */
HOT static void FN(bias_grad)(int64_t T, int64_t nb, int64_t bm, int64_t G, int64_t Gp, const real *z, int64_t nx,
                              const real *in, real *restrict db, real *restrict dWx)
{
    memset(db, 0, (size_t)G * sizeof(real));
    if (nx) memset(dWx, 0, (size_t)(nx * G) * sizeof(real));
    for (int64_t t = 0; t < T; t++)
        for (int64_t r = 0; r < nb; r++) {
            const real *restrict zr = z + (t * bm + r) * Gp;
            for (int64_t k = 0; k < G; k++) db[k] += zr[k];
            for (int64_t d = 0; d < nx; d++) {
                const real xd = in[(t * bm + r) * nx + d];
                real *restrict row = dWx + d * G;
                for (int64_t k = 0; k < G; k++) row[k] += xd * zr[k];
            }
        }
}

/* ======================= one shard: forward, loss, backward ======================= */

#define HS(l) (sh->hs + (l) * (T + 1) * bm * H) /* layer l's (T+1, bm, H) block */
#define CS(l) (sh->cs + (l) * (T + 1) * bm * H)
#define ZS(l) (sh->z + (l) * T * bm * Gp)
#define TCS(l) (sh->tc + (l) * T * bm * H)
#define HD(site) (sh->hd + ((site) - 1) * T * bm * H) /* the masked sequence of dropout site `site` */

/* ---- dropout (design.md 9) ----
 * Site l (1 <= l < L) is the input of layer l, site L the head's: layer l-1's h sequence as it
 * leaves, never the recurrent h_{t-1}. The reference multiplies by a mask of 0 and 1/(1-p):
 *     h_masked = h * m,   m[k, t, j] = fmix32(((row_k T + t) H + j) ^ key_site) >= thr ? scale : 0
 *     dLoss/dh (from above) = dLoss/dh_masked * m   (the gradient comes down through the same mask)
 * The kernel draws m from the hash where it is used, one step at a time while the rows are in
 * cache: forward, right after the gate math writes h_{t+1}, its masked copy goes to HD(site) (the
 * layer above's input product and dW_x read that); backward, dLoss/dh_t from above is multiplied
 * in place just before the step's gate math reads it. Without dropout none of this runs, and
 * a model with p = 0 has no HD buffers. */

/* m of the element with counter e: scale if kept, else 0 */
INLINE real FN(drop_mult)(uint32_t e, uint32_t key, uint32_t thr, real scale)
{
    return fmix32(e ^ key) >= thr ? scale : (real)0;
}

/* out = h * m over n elements whose counters start at e0 (vectorised: the hash is integer SIMD) */
HOT static void FN(drop_copy)(int64_t n, real *restrict out, const real *restrict h, uint32_t e0, uint32_t key,
                              uint32_t thr, real scale)
{
    for (int64_t j = 0; j < n; j++) out[j] = h[j] * FN(drop_mult)(e0 + (uint32_t)j, key, thr, scale);
}

/* x *= m (a gradient through the mask) */
HOT static void FN(drop_inplace)(int64_t n, real *restrict x, uint32_t e0, uint32_t key, uint32_t thr, real scale)
{
    for (int64_t j = 0; j < n; j++) x[j] *= FN(drop_mult)(e0 + (uint32_t)j, key, thr, scale);
}

/* The counter of hidden unit u of kernel row k at step t: (row_k T + t) H + u, on uint32 (wrapping) */
INLINE uint32_t FN(drop_counter)(const FN(work) *w, int64_t k, int64_t t, int64_t u)
{
    return (w->drows[k] * (uint32_t)w->T + (uint32_t)t) * (uint32_t)w->H + (uint32_t)u;
}

/* Whether layer l's h sequence leaves through a mask at every step: into layer l+1 or a
 * many-to-many head (a many-to-one head reads, and masks, one step per row: drop_last). */
INLINE int FN(drops_out)(const FN(work) *w, int64_t l) { return w->drop && (l + 1 < w->L || w->m2m); }

/* Step t of site `site` on shard s, hidden units u0 .. u1, h the step's (bm, H) block: with out,
 * out = h * m for the na rows that take the step and 0 for the other rows of the shard (forward);
 * without, h *= m for those na rows (backward, h holding dLoss/dh_t; the others hold 0). */
static void FN(drop_step)(const FN(work) *w, int64_t s, int64_t site, int64_t t, int64_t na, int64_t u0,
                          int64_t u1, real *h, real *out)
{
    const int64_t H = w->H, n = u1 - u0;
    const uint32_t key = w->dkeys[site];
    for (int64_t r = 0; r < na; r++) {
        const uint32_t e0 = FN(drop_counter)(w, s * w->bm + r, t, u0);
        if (out)
            FN(drop_copy)(n, out + r * H + u0, h + r * H + u0, e0, key, w->dthr, w->dscale);
        else
            FN(drop_inplace)(n, h + r * H + u0, e0, key, w->dthr, w->dscale);
    }
    for (int64_t r = na; out && r < w->bm; r++) memset(out + r * H + u0, 0, (size_t)n * sizeof(real));
}

/* A many-to-one head's rows (buf: nb rows of H, row r at its last step len_r - 1) times site L's
 * m at that step, in place: forward the h the head reads, backward dLoss/dh coming down. */
static void FN(drop_last)(const FN(work) *w, int64_t s, real *buf)
{
    const int64_t H = w->H, nb = min64(w->bm, w->B - s * w->bm);
    for (int64_t r = 0; r < nb; r++)
        FN(drop_inplace)(H, buf + r * H, FN(drop_counter)(w, s * w->bm + r, FN(row_len)(w, s, r) - 1, 0),
                         w->dkeys[w->L], w->dthr, w->dscale);
}

/* Layer l's input sequence (T, bm, D_l): the shard's x, or h_1 .. h_T of the layer below, masked
 * when the call has dropout; l = L: what a many-to-many head reads. */
INLINE const real *FN(layer_input)(const FN(work) *w, const FN(shard) *sh, int64_t l)
{
    const int64_t T = w->T, H = w->H, bm = w->bm;
    if (l == 0) return sh->xs;
    return w->drop ? HD(l) : HS(l - 1) + bm * H;
}

/* One-hot input (w->sym): z[t, r, c0 .. c0+n) = W_x[s(t, r), c0 .. c0+n) for the shard's rows
 * at their steps (padding rows and a row's steps past its length 0), in place of the product
 * with x, for the steps of the shard's longest row. */
static void FN(gather_rows)(const FN(work) *w, int64_t s, const real *Wx, int64_t c0, int64_t n, real *z, int64_t ldz)
{
    const int64_t T = w->T, G = w->G, bm = w->bm, lo = s * bm, nb = min64(bm, w->B - lo);
    for (int64_t t = 0; t < FN(shard_steps)(w, s); t++)
        for (int64_t r = 0; r < bm; r++) {
            real *zr = z + (t * bm + r) * ldz + c0;
            if (r < nb && t < FN(row_len)(w, s, r))
                memcpy(zr, Wx + w->sym[(lo + r) * T + t] * G + c0, (size_t)n * sizeof(real));
            else
                memset(zr, 0, (size_t)n * sizeof(real));
        }
}

/* One-hot input: dW_x[:, c0 .. c0+n) = sum over the shard's rows of dz[t, r] added to row
 * s(t, r), in (t, r) order; rows of W_x no symbol used stay 0. */
static void FN(scatter_rows)(const FN(work) *w, int64_t s, const real *z, int64_t ldz, int64_t c0, int64_t n,
                             real *dWx)
{
    const int64_t T = w->T, G = w->G, bm = w->bm, lo = s * bm, nb = min64(bm, w->B - lo);
    for (int64_t d = 0; d < w->D; d++) memset(dWx + d * G + c0, 0, (size_t)n * sizeof(real));
    for (int64_t t = 0; t < FN(shard_steps)(w, s); t++)
        for (int64_t r = 0; r < active_rows(FN(shard_len)(w, s), nb, t); r++) {
            real *restrict row = dWx + w->sym[(lo + r) * T + t] * G + c0;
            const real *restrict zr = z + (t * bm + r) * ldz + c0;
            for (int64_t j = 0; j < n; j++) row[j] += zr[j];
        }
}

/* The shard's rows of x (B, T, D), time-major, for the steps of its longest row (padding rows
 * and steps past a row's length zero: they are never used, and zeros keep every product that
 * reads them finite); h_0, c_0 the initial state's rows (or 0); padding rows zero. */
static void FN(stage_shard)(const FN(work) *w, int64_t s, const real *x)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, D = w->D, H = w->H, L = w->L, B = w->B, bm = w->bm;
    const int64_t lo = s * bm, nb = min64(bm, w->B - lo);
    for (int64_t t = 0; t < FN(shard_steps)(w, s) && !w->sym; t++) /* (one-hot input is read as symbol ids) */
        for (int64_t r = 0; r < bm; r++) {
            const int live = r < nb && t < FN(row_len)(w, s, r);
            for (int64_t k = 0; k < D; k++) sh->xs[(t * bm + r) * D + k] = live ? x[((lo + r) * T + t) * D + k] : 0;
        }
    for (int64_t l = 0; l < L; l++) {
        real *h = HS(l), *c = CS(l);
        memset(h, 0, (size_t)(bm * H) * sizeof(real)); /* h_0 = 0 (padding rows too) */
        memset(c, 0, (size_t)(bm * H) * sizeof(real)); /* c_0 = 0 */
        if (w->h0) { /* the initial state's rows lo .. lo+nb of layer l */
            memcpy(h, w->h0 + (l * B + lo) * H, (size_t)(nb * H) * sizeof(real));
            memcpy(c, w->c0 + (l * B + lo) * H, (size_t)(nb * H) * sizeof(real));
        }
        for (int64_t t = 1; t <= T && nb < bm; t++) {  /* padding rows stay zero */
            memset(h + (t * bm + nb) * H, 0, (size_t)((bm - nb) * H) * sizeof(real));
            memset(c + (t * bm + nb) * H, 0, (size_t)((bm - nb) * H) * sizeof(real));
        }
    }
}

static void FN(head_forward)(const FN(work) *w, int64_t s, const real *theta);

/* h_{t+1} of the rows past their length at step t (na .. nb-1, hidden units u0 .. u1) is 0: the
 * layer above and the weight gradients read these rows (with zero dz), and must read finite
 * values. (A row's final state, at index len_b, is never among them.) */
INLINE void FN(clear_finished)(int64_t na, int64_t nb, int64_t H, int64_t u0, int64_t u1, real *h_next)
{
    for (int64_t r = na; r < nb; r++) memset(h_next + r * H + u0, 0, (size_t)(u1 - u0) * sizeof(real));
}

/* Each row's h and c after its own last step (index len_b of hs, cs) into hn, cn (L, B, H). */
static void FN(final_state)(const FN(work) *w, int64_t s)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, B = w->B, bm = w->bm, lo = s * bm, nb = min64(bm, B - lo);
    for (int64_t l = 0; w->hn && l < w->L; l++)
        for (int64_t r = 0; r < nb; r++) {
            const int64_t at = (FN(row_len)(w, s, r) * bm + r) * H;
            memcpy(w->hn + (l * B + lo + r) * H, HS(l) + at, (size_t)H * sizeof(real));
            memcpy(w->cn + (l * B + lo + r) * H, CS(l) + at, (size_t)H * sizeof(real));
        }
}

/* Rows of `width` reals of a time-major shard buffer (step t's bm rows at src + t*bm*width): the
 * rows that take each step t < Ts, one after another into dst; returns their count, sum_t na_t.
 * dst may be src: rows only move to earlier places. */
static int64_t FN(pack_steps)(const FN(work) *w, int64_t s, const real *src, int64_t width, real *dst)
{
    const int64_t bm = w->bm, nb = min64(bm, w->B - s * bm), *len = FN(shard_len)(w, s);
    int64_t K = 0;
    for (int64_t t = 0; t < FN(shard_steps)(w, s); t++) {
        const int64_t na = active_rows(len, nb, t);
        memmove(dst + K * width, src + t * bm * width, (size_t)(na * width) * sizeof(real));
        K += na;
    }
    return K;
}

/* pack_steps' inverse into dst (T, bm, width): the rows that take step t from src, the others 0. */
static void FN(unpack_steps)(const FN(work) *w, int64_t s, const real *src, int64_t width, real *dst)
{
    const int64_t bm = w->bm, nb = min64(bm, w->B - s * bm), *len = FN(shard_len)(w, s);
    int64_t K = 0;
    for (int64_t t = 0; t < FN(shard_steps)(w, s); t++) {
        const int64_t na = active_rows(len, nb, t);
        memcpy(dst + t * bm * width, src + K * width, (size_t)(na * width) * sizeof(real));
        memset(dst + (t * bm + na) * width, 0, (size_t)((bm - na) * width) * sizeof(real));
        K += na;
    }
}

/* With lengths: x_t @ W_x of layer l over the rows that take each step (sum_b len_b rows): the
 * inputs packed (pack_steps), one product into the first rows of z, then each step's rows moved
 * out to their (t, r) places, last step first (a place is never before its packed rows), and
 * the rows that do not take the step zeroed. */
static void FN(input_product_packed)(const FN(work) *w, int64_t s, int64_t l, const real *in, real *z)
{
    const int64_t Dl = l == 0 ? w->D : w->H, G = w->G, Gp = w->Gp, bm = w->bm;
    const int64_t nb = min64(bm, w->B - s * bm), *len = FN(shard_len)(w, s);
    int64_t K = FN(pack_steps)(w, s, in, Dl, w->sh[s].pk);
    FN(gemm_packed)(K, G, Dl, w->sh[s].pk, Dl, 1, w->pwx[l], z, Gp, 0);
    for (int64_t t = FN(shard_steps)(w, s) - 1; t >= 0; t--) {
        const int64_t na = active_rows(len, nb, t);
        K -= na;
        memmove(z + t * bm * Gp, z + K * Gp, (size_t)(na * Gp) * sizeof(real));
        memset(z + (t * bm + na) * Gp, 0, (size_t)((bm - na) * Gp) * sizeof(real));
    }
}

static void FN(shard_forward)(const FN(work) *w, int64_t s, const real *theta, const real *x)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, D = w->D, H = w->H, G = w->G, Gp = w->Gp, L = w->L, bm = w->bm;
    const int64_t nb = min64(bm, w->B - s * bm), Ts = FN(shard_steps)(w, s);
    const int64_t *len = FN(shard_len)(w, s);
    FN(stage_shard)(w, s, x);
    for (int64_t l = 0; l < L; l++) {
        const int64_t Dl = l == 0 ? D : H;
        const real *in = FN(layer_input)(w, sh, l); /* (T, bm, D_l): x, or h_1..h_T below (masked) */
        real *h = HS(l), *c = CS(l), *z = ZS(l), *tc = TCS(l);
        const real *b = theta + w->offs[3 * l + 2];
        if (l == 0 && w->sym) /* one-hot x_t = e_s: x_t @ W_x is row s of W_x */
            FN(gather_rows)(w, s, theta + w->offs[0], 0, G, z, Gp);
        else if (len) /* the same over the rows that take each step */
            FN(input_product_packed)(w, s, l, in, z);
        else /* x_t @ W_x for every step at once: (T*bm, D_l) @ (D_l, 4H) */
            FN(gemm_packed)(T * bm, G, Dl, in, Dl, 1, w->pwx[l], z, Gp, 0);
        for (int64_t t = 0; t < Ts; t++) {
            real *zt = z + t * bm * Gp;
            const int64_t na = active_rows(len, nb, t);
            if (t > 0 || w->h0) /* += h_{t-1} @ W_h; h_0 = 0 needs no product */
                FN(gemm_packed)(na, G, H, h + t * bm * H, H, 1, w->pwh[l], zt, Gp, 1);
            FN(gates_forward)(na, H, 0, H, zt, Gp, b, c + t * bm * H, c + (t + 1) * bm * H, tc + t * bm * H,
                              h + (t + 1) * bm * H);
            FN(clear_finished)(na, nb, H, 0, H, h + (t + 1) * bm * H);
            if (FN(drops_out)(w, l)) /* h_{t+1} through the mask, for the layer above (or the head) */
                FN(drop_step)(w, s, l + 1, t, na, 0, H, h + (t + 1) * bm * H, HD(l + 1) + t * bm * H);
        }
    }
    FN(head_forward)(w, s, theta);
    FN(final_state)(w, s);
}

/* Many-to-one: the top layer's h at each row's own last step (into sh->hl with lengths or
 * dropout, then masked by site L at that step). */
static const real *FN(last_top)(const FN(work) *w, int64_t s)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, L = w->L, bm = w->bm, nb = min64(bm, w->B - s * bm);
    if (!w->len && !w->drop) return HS(L - 1) + T * bm * H; /* h_T of every row: contiguous */
    for (int64_t r = 0; r < nb; r++)
        memcpy(sh->hl + r * H, HS(L - 1) + (FN(row_len)(w, s, r) * bm + r) * H, (size_t)H * sizeof(real));
    if (w->drop) FN(drop_last)(w, s, sh->hl);
    return sh->hl;
}

/* The head: y = h @ W_y + b_y on each row's last h, or on every h_t (zeros past a row's length,
 * as torch's pad_packed_sequence gives). */
static void FN(head_forward)(const FN(work) *w, int64_t s, const real *theta)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t H = w->H, L = w->L, O = w->O, bm = w->bm;
    const int64_t nb = min64(bm, w->B - s * bm), Ts = FN(shard_steps)(w, s);
    const real *by = theta + w->offs[3 * L + 1];
    if (w->m2m) /* every h_t (masked with dropout) */
        FN(gemm_packed)(Ts * bm, O, H, FN(layer_input)(w, sh, L), H, 1, w->pwy, sh->yout, O, 0);
    else
        FN(gemm_packed)(nb, O, H, FN(last_top)(w, s), H, 1, w->pwy, sh->yout, O, 0);
    for (int64_t tt = 0; tt < w->Tout; tt++)
        for (int64_t r = 0; r < nb; r++) {
            real *yr = sh->yout + (tt * bm + r) * O;
            if (w->m2m && tt >= FN(row_len)(w, s, r))
                memset(yr, 0, (size_t)O * sizeof(real));
            else
                for (int64_t k = 0; k < O; k++) yr[k] += by[k];
        }
}

/* This shard's sum of loss terms (in double) and dy = dLoss/dy_hat.
 * mse:  terms (y_hat - y)^2, dy = (2/N) (y_hat - y), N = every output element;
 * xent: terms -log softmax(y_hat)[class] (softmax with the row max subtracted),
 *       dy = (softmax - onehot) / N, N = every prediction. */
static double FN(shard_loss)(const FN(work) *w, int64_t s, const real *y, const int64_t *cls, real coef)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t O = w->O, Op = w->Op, bm = w->bm, Tout = w->Tout;
    const int64_t lo = s * bm, nb = min64(bm, w->B - lo);
    double total = 0.0;
    memset(sh->dy, 0, (size_t)(Tout * bm * Op) * sizeof(real)); /* padding rows and columns zero */
    for (int64_t tt = 0; tt < Tout; tt++)
        for (int64_t r = 0; r < nb && !(w->m2m && tt >= FN(row_len)(w, s, r)); r++) { /* (rows longest first) */
            const real *yh = sh->yout + (tt * bm + r) * O;
            real *dy = sh->dy + (tt * bm + r) * Op;
            if (w->xent) {
                real m = yh[0];
                for (int64_t k = 1; k < O; k++) m = yh[k] > m ? yh[k] : m;
                double sum_exp = 0.0;
                for (int64_t k = 0; k < O; k++) sum_exp += exp((double)(yh[k] - m));
                const double log_sum = log(sum_exp);
                const int64_t target = cls[(lo + r) * Tout + tt];
                total -= (double)(yh[target] - m) - log_sum;
                for (int64_t k = 0; k < O; k++) dy[k] = coef * (real)exp((double)(yh[k] - m) - log_sum);
                dy[target] -= coef;
            } else {
                const real *yr = y + ((lo + r) * Tout + tt) * O;
                for (int64_t k = 0; k < O; k++) {
                    const real diff = yh[k] - yr[k];
                    total += (double)diff * (double)diff;
                    dy[k] = coef * diff;
                }
            }
        }
    return total;
}

/* The head's gradients dW_y = top^T dy, db_y = column sums of dy, and dLoss/dh of the top
 * layer = dy @ W_y^T into dh (for the steps of the shard's longest row; dy is 0 past a row's
 * length, and so is what it gives). */
static void FN(head_backward)(const FN(work) *w, int64_t s)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, L = w->L, O = w->O, Op = w->Op;
    const int64_t bm = w->bm, Tout = w->Tout, nb = min64(bm, w->B - s * bm), Ts = FN(shard_steps)(w, s);
    const int64_t *offs = w->offs;
    real *grad = sh->grad, *dh = sh->dh;
    const real *top = HS(L - 1);
    real *dWy = grad + offs[3 * L], *dby = grad + offs[3 * L + 1];
    if (w->m2m) { /* (with dropout dh goes through the mask step by step: shard_backward) */
        FN(gemm_plain)(H, O, Ts * bm, FN(layer_input)(w, sh, L), 1, H, sh->dy, Op, dWy, O, 0, sh->apack);
        FN(gemm_packed)(Ts * bm, H, O, sh->dy, Op, 1, w->pwyt, dh, H, 0);
    } else if (!w->len && !w->drop) {
        FN(gemm_plain)(H, O, nb, top + T * bm * H, 1, H, sh->dy, Op, dWy, O, 0, sh->apack);
        memset(dh, 0, (size_t)((T - 1) * bm * H) * sizeof(real)); /* no loss on h_1 .. h_{T-1} */
        FN(gemm_packed)(nb, H, O, sh->dy, Op, 1, w->pwyt, dh + (T - 1) * bm * H, H, 0);
    } else { /* each row's loss is on its own last step */
        FN(gemm_plain)(H, O, nb, sh->hl, 1, H, sh->dy, Op, dWy, O, 0, sh->apack); /* hl: head_forward's */
        memset(dh, 0, (size_t)(Ts * bm * H) * sizeof(real));
        FN(gemm_packed)(nb, H, O, sh->dy, Op, 1, w->pwyt, sh->hl, H, 0);
        if (w->drop) FN(drop_last)(w, s, sh->hl); /* through the mask the head's input had */
        for (int64_t r = 0; r < nb; r++)
            memcpy(dh + ((FN(row_len)(w, s, r) - 1) * bm + r) * H, sh->hl + r * H, (size_t)H * sizeof(real));
    }
    for (int64_t k = 0; k < O; k++) dby[k] = 0;
    for (int64_t tt = 0; tt < min64(Tout, Ts); tt++)
        for (int64_t r = 0; r < nb; r++)
            for (int64_t k = 0; k < O; k++) dby[k] += sh->dy[(tt * bm + r) * Op + k];
}

/* Layer l's weight gradients, one product each over all steps, and dLoss/dh of the layer below:
 *   dW_x = sum_t x_t^T dz_t        = in^T (D_l, T*bm) @ dz (T*bm, 4H)
 *   dW_h = sum_t h_{t-1}^T dz_t    (h_0 = 0 without an initial state: from t = 2 on) */
static void FN(weight_grads)(const FN(work) *w, int64_t s, int64_t l)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, G = w->G, Gp = w->Gp, bm = w->bm, nb = min64(bm, w->B - s * bm);
    const int64_t Dl = l == 0 ? w->D : H;
    const real *in = FN(layer_input)(w, sh, l), *h = HS(l);
    real *z = ZS(l), *grad = sh->grad;
    real *dWx = grad + w->offs[3 * l], *dWh = grad + w->offs[3 * l + 1], *db = grad + w->offs[3 * l + 2];
    const int one_hot = l == 0 && w->sym;
    const int narrow = !one_hot && Dl < MR; /* a thin dW_x (few inputs) is cheaper in the db pass below */
    if (one_hot)
        FN(scatter_rows)(w, s, z, Gp, 0, G, dWx);
    else if (!narrow)
        FN(gemm_plain)(Dl, G, T * bm, in, 1, Dl, z, Gp, dWx, G, 0, sh->apack);
    if (w->h0)
        FN(gemm_plain)(H, G, T * bm, h, 1, H, z, Gp, dWh, G, 0, sh->apack);
    else
        FN(gemm_plain)(H, G, (T - 1) * bm, h + bm * H, 1, H, z + bm * Gp, Gp, dWh, G, 0, sh->apack);
    FN(bias_grad)(T, nb, bm, G, Gp, z, narrow ? Dl : 0, in, db, dWx);
    if (l > 0) /* dLoss/dh of the layer below: dz @ W_x^T, (T*bm, 4H) @ (4H, H) */
        FN(gemm_packed)(T * bm, H, G, z, Gp, 1, w->pwxt[l], sh->dh, H, 0);
}

/* weight_grads with lengths: the products run over the rows that took each step (sum_b len_b
 * rows, not Ts x bm): dz is packed in place, the inputs and h_{t-1} into sh->pk, and the
 * gradient to the layer below comes back to its (t, r) places. */
static void FN(weight_grads_packed)(const FN(work) *w, int64_t s, int64_t l)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, G = w->G, Gp = w->Gp, bm = w->bm, Dl = l == 0 ? w->D : H;
    const real *in = FN(layer_input)(w, sh, l), *h = HS(l);
    real *z = ZS(l), *grad = sh->grad, *pk = sh->pk;
    real *dWx = grad + w->offs[3 * l], *dWh = grad + w->offs[3 * l + 1], *db = grad + w->offs[3 * l + 2];
    const int one_hot = l == 0 && w->sym;
    if (one_hot)
        FN(scatter_rows)(w, s, z, Gp, 0, G, dWx); /* (reads dz in its (t, r) places) */
    const int64_t K = FN(pack_steps)(w, s, z, Gp, z);
    if (one_hot) {
        FN(bias_grad)(1, K, K, G, Gp, z, 0, NULL, db, dWx);
    } else {
        FN(pack_steps)(w, s, in, Dl, pk);
        const int narrow = Dl < MR;
        if (!narrow) FN(gemm_plain)(Dl, G, K, pk, 1, Dl, z, Gp, dWx, G, 0, sh->apack);
        FN(bias_grad)(1, K, K, G, Gp, z, narrow ? Dl : 0, pk, db, dWx);
    }
    FN(pack_steps)(w, s, h, H, pk); /* h_{t-1} of step t: h_0 is the initial state, or 0 */
    FN(gemm_plain)(H, G, K, pk, 1, H, z, Gp, dWh, G, 0, sh->apack);
    if (l > 0) {
        FN(gemm_packed)(K, H, G, z, Gp, 1, w->pwxt[l], pk, H, 0);
        FN(unpack_steps)(w, s, pk, H, sh->dh);
    }
}

static void FN(shard_backward)(const FN(work) *w, int64_t s)
{
    const FN(shard) *sh = &w->sh[s];
    const int64_t T = w->T, H = w->H, G = w->G, Gp = w->Gp, L = w->L;
    const int64_t bm = w->bm, nb = min64(bm, w->B - s * bm), Ts = FN(shard_steps)(w, s);
    const int64_t *len = FN(shard_len)(w, s);
    real *dh = sh->dh;
    FN(head_backward)(w, s);
    for (int64_t l = L - 1; l >= 0; l--) {
        const real *c = CS(l), *tc = TCS(l);
        real *z = ZS(l);
        /* nothing flows back from a row's last step + 1: a row's dhn, dcn are 0 until its
         * last step (the product below writes only the rows still going at t+1) */
        memset(sh->dhn, 0, (size_t)(bm * H) * sizeof(real));
        memset(sh->dcn, 0, (size_t)(bm * H) * sizeof(real));
        for (int64_t t = Ts - 1; t >= 0; t--) {
            const int64_t na = active_rows(len, nb, t);
            if (t < Ts - 1) /* dLoss/dh_t through h_{t+1}: dz_{t+1} @ W_h^T (z[t+1] holds dz now) */
                FN(gemm_packed)(active_rows(len, nb, t + 1), H, G, z + (t + 1) * bm * Gp, Gp, 1, w->pwht[l], sh->dhn,
                                H, 0);
            if (FN(drops_out)(w, l)) /* dLoss/dh_t from above came through the mask h_t left by */
                FN(drop_step)(w, s, l + 1, t, na, 0, H, dh + t * bm * H, NULL);
            FN(gates_backward)(na, H, 0, H, z + t * bm * Gp, Gp, c + t * bm * H, tc + t * bm * H, dh + t * bm * H,
                               sh->dhn, sh->dcn);
        }
        if (len)
            FN(weight_grads_packed)(w, s, l);
        else
            FN(weight_grads)(w, s, l);
    }
}

/* ======================= one shard, its hidden units shared by the threads ======================= *
 *
 * For a batch too small to give every thread a shard of its own (lstm.c: shard_plan), all
 * threads of the parallel region run these on the one shard together. Thread k owns hidden
 * units [u0, u1) (whole column panels): their four gate columns of every product, their
 * gate math, c, h and dz, so its slice of W_h (and W_h^T) stays in its own cache for the
 * whole sequence; a barrier per step makes h_t (forward) or dz_t (backward) whole before
 * the next step reads all of it. What is cheap and shared (the input, the head, the loss)
 * runs on one thread. */

static void FN(team_units)(const FN(work) *w, int64_t *u0, int64_t *u1)
{
#ifdef _OPENMP
    const int64_t k = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t k = 0, nt = 1;
#endif
    const int64_t panels = ceil_div(w->H, NR);
    *u0 = min64(w->H, (k * panels / nt) * NR);
    *u1 = min64(w->H, ((k + 1) * panels / nt) * NR);
}

static real *FN(team_apack)(const FN(work) *w)
{
#ifdef _OPENMP
    return w->tapack[omp_get_thread_num()];
#else
    return w->tapack[0];
#endif
}

static void FN(team_forward)(const FN(work) *w, const real *theta, const real *x)
{
    const FN(shard) *sh = &w->sh[0];
    const int64_t T = w->T, D = w->D, H = w->H, Gp = w->Gp, L = w->L, bm = w->bm, nb = w->B;
    const int64_t Hp = round_up(H, NR), Ts = FN(shard_steps)(w, 0);
    int64_t u0, u1;
    FN(team_units)(w, &u0, &u1);
    const int64_t n = u1 - u0;
#pragma omp single
    FN(stage_shard)(w, 0, x); /* (a barrier at its end) */
    for (int64_t l = 0; l < L; l++) {
        const int64_t Dl = l == 0 ? D : H;
        const real *in = FN(layer_input)(w, sh, l); /* (masked by each thread's units below: whole now) */
        real *h = HS(l), *c = CS(l), *z = ZS(l), *tc = TCS(l);
        const real *b = theta + w->offs[3 * l + 2];
        for (int g = 0; n > 0 && g < 4; g++) /* x_t @ W_x, every step: this thread's columns of each gate */
            if (l == 0 && w->sym)
                FN(gather_rows)(w, 0, theta + w->offs[0], g * H + u0, n, z, Gp);
            else
                FN(gemm_packed_cols)(Ts * bm, n, Dl, in, Dl, 1, w->pwxg[4 * l + g], Hp, u0, z + g * H + u0, Gp, 0);
        for (int64_t t = 0; t < Ts; t++) {
            real *zt = z + t * bm * Gp;
            const int64_t na = active_rows(w->len, nb, t);
            for (int g = 0; (t > 0 || w->h0) && n > 0 && g < 4; g++) /* += h_{t-1} @ W_h, all of h_{t-1} */
                FN(gemm_packed_cols)(na, n, H, h + t * bm * H, H, 1, w->pwhg[4 * l + g], Hp, u0, zt + g * H + u0,
                                     Gp, 1);
            if (n > 0) {
                FN(gates_forward)(na, H, u0, u1, zt, Gp, b, c + t * bm * H, c + (t + 1) * bm * H, tc + t * bm * H,
                                  h + (t + 1) * bm * H);
                FN(clear_finished)(na, nb, H, u0, u1, h + (t + 1) * bm * H);
                if (FN(drops_out)(w, l)) /* this thread's units of h_{t+1}, masked, for the layer above */
                    FN(drop_step)(w, 0, l + 1, t, na, u0, u1, h + (t + 1) * bm * H, HD(l + 1) + t * bm * H);
            }
#pragma omp barrier
        }
    }
#pragma omp single
    {
        FN(head_forward)(w, 0, theta);
        FN(final_state)(w, 0);
    }
}

static void FN(team_backward)(const FN(work) *w)
{
    const FN(shard) *sh = &w->sh[0];
    const int64_t T = w->T, D = w->D, H = w->H, Gp = w->Gp, L = w->L, bm = w->bm, nb = w->B;
    const int64_t *offs = w->offs, Ts = FN(shard_steps)(w, 0);
    real *grad = sh->grad, *dh = sh->dh;
    int64_t u0, u1;
    FN(team_units)(w, &u0, &u1);
    const int64_t n = u1 - u0;
    real *apack = FN(team_apack)(w);
#pragma omp single
    FN(head_backward)(w, 0);
    for (int64_t l = L - 1; l >= 0; l--) {
        const int64_t Dl = l == 0 ? D : H;
        const real *in = FN(layer_input)(w, sh, l);
        const real *h = HS(l), *c = CS(l), *tc = TCS(l);
        real *z = ZS(l);
        for (int64_t r = 0; r < nb; r++) { /* nothing flows back from a row's last step + 1 */
            memset(sh->dhn + r * H + u0, 0, (size_t)n * sizeof(real));
            memset(sh->dcn + r * H + u0, 0, (size_t)n * sizeof(real));
        }
        for (int64_t t = Ts - 1; t >= 0; t--) {
            if (t < Ts - 1 && n > 0) /* dh_t through h_{t+1}: dz_{t+1} (all of it) @ this thread's columns of W_h^T */
                FN(gemm_packed_cols)(active_rows(w->len, nb, t + 1), n, 4 * H, z + (t + 1) * bm * Gp, Gp, 1,
                                     w->pwht[l], round_up(H, NR), u0, sh->dhn + u0, H, 0);
            if (n > 0 && FN(drops_out)(w, l)) /* this thread's units of dLoss/dh_t, through the mask */
                FN(drop_step)(w, 0, l + 1, t, active_rows(w->len, nb, t), u0, u1, dh + t * bm * H, NULL);
            if (n > 0)
                FN(gates_backward)(active_rows(w->len, nb, t), H, u0, u1, z + t * bm * Gp, Gp, c + t * bm * H,
                                   tc + t * bm * H, dh + t * bm * H, sh->dhn, sh->dcn);
#pragma omp barrier
        }
        /* this thread's gate columns of dW_x = in^T dz, dW_h = h_{t-1}^T dz and db */
        real *dWx = grad + offs[3 * l], *dWh = grad + offs[3 * l + 1], *db = grad + offs[3 * l + 2];
        for (int g = 0; n > 0 && g < 4; g++) {
            const int64_t c0 = g * H + u0;
            if (l == 0 && w->sym)
                FN(scatter_rows)(w, 0, z, Gp, c0, n, dWx);
            else
                FN(gemm_plain)(Dl, n, Ts * bm, in, 1, Dl, z + c0, Gp, dWx + c0, 4 * H, 0, apack);
            if (w->h0)
                FN(gemm_plain)(H, n, Ts * bm, h, 1, H, z + c0, Gp, dWh + c0, 4 * H, 0, apack);
            else
                FN(gemm_plain)(H, n, (Ts - 1) * bm, h + bm * H, 1, H, z + bm * Gp + c0, Gp, dWh + c0, 4 * H, 0, apack);
            real *restrict dbg = db + c0;
            memset(dbg, 0, (size_t)n * sizeof(real));
            for (int64_t row = 0; row < Ts * bm; row++) {
                const real *restrict zr = z + row * Gp + c0;
                for (int64_t j = 0; j < n; j++) dbg[j] += zr[j];
            }
        }
        if (l > 0 && n > 0) /* dLoss/dh of the layer below, its units u0..u1: dz @ W_x^T */
            FN(gemm_packed_cols)(Ts * bm, n, 4 * H, z, Gp, 1, w->pwxt[l], round_up(H, NR), u0, dh + u0, H, 0);
#pragma omp barrier
    }
}

#undef HS
#undef CS
#undef ZS
#undef TCS
#undef HD

/* ======================= reduction and optimizer ======================= */

/* Sum of squares of grad[lo, hi) in double, in a fixed order (8 running sums). */
static double FN(chunk_sumsq)(const real *restrict grad, int64_t lo, int64_t hi)
{
    double part[8] = {0};
    int64_t j = lo;
    for (; j + 8 <= hi; j += 8)
        for (int k = 0; k < 8; k++) part[k] += (double)grad[j + k] * (double)grad[j + k];
    for (; j < hi; j++) part[0] += (double)grad[j] * (double)grad[j];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* grad = sum of the shards' rows, always in shard order; and per chunk of CHUNK
 * parameters the sum of squares (double), later added in chunk order. Both
 * are independent of how chunks are spread over threads. */
static void FN(reduce)(const FN(work) *w, real *restrict grad)
{
    const int64_t P = w->P, S = w->S;
#pragma omp parallel for schedule(static) num_threads(w->threads)
    for (int64_t ch = 0; ch < w->nchunks; ch++) {
        const int64_t lo = ch * CHUNK, hi = min64(P, lo + CHUNK);
        memcpy(grad + lo, w->sh[0].grad + lo, (size_t)(hi - lo) * sizeof(real));
        for (int64_t s = 1; s < S; s++) {
            const real *restrict gs = w->sh[s].grad;
            for (int64_t j = lo; j < hi; j++) grad[j] += gs[j];
        }
        w->sq[ch] = FN(chunk_sumsq)(grad, lo, hi);
    }
}

/* One step's constants in the dtype: the host's (lstm_optim, double) rounded, as the reference
 * rounds them (p.dtype.type(...)); the flags say whether a decay is there at all (the reference
 * tests the double values), so a step without one does exactly what it did before decay existed. */
typedef struct {
    real scale;                /* clipping: g *= min(clip / (norm + 1e-6), 1), or 1 */
    int l2_on, decay_on;       /* weight decay: L2 (SGD, Adam) or decoupled (AdamW) */
    real l2, decay_factor;     /* g += l2 theta after clipping; theta *= decay_factor before the update */
    real lr, momentum;         /* SGD */
    int first;                 /* SGD: the first step starts the momentum buffer as g */
    real b1, omb1, b2, omb2, step_size, bias2_sqrt, eps; /* Adam */
} FN(step_consts);

static FN(step_consts) FN(consts_of)(const lstm_optim *opt, double scale)
{
    FN(step_consts) k;
    k.scale = (real)scale;
    k.l2_on = opt->l2 != 0.0, k.l2 = (real)opt->l2;
    k.decay_on = opt->decay_factor != 1.0, k.decay_factor = (real)opt->decay_factor;
    k.lr = (real)opt->lr, k.momentum = (real)opt->momentum, k.first = opt->first_step != 0;
    k.b1 = (real)opt->beta1, k.omb1 = (real)opt->one_minus_beta1, k.b2 = (real)opt->beta2;
    k.omb2 = (real)opt->one_minus_beta2, k.step_size = (real)opt->step_size;
    k.bias2_sqrt = (real)opt->bias2_sqrt, k.eps = (real)opt->eps;
    return k;
}

/* lstmbench.optim.optimizer_step, elementwise, in its order:
 *   g = grad * scale;  g += l2 * theta (L2);  theta *= decay_factor (AdamW);  then
 * torch.optim.Adam: m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * with step_size = lr / (1 - b1^t) and bias2_sqrt = sqrt(1 - b2^t) from the host */
HOT static void FN(adam)(int64_t n, real *restrict theta, const real *restrict grad, real *restrict m,
                         real *restrict v, const FN(step_consts) *kp)
{
    const FN(step_consts) k = *kp; /* (locals: no aliasing with the arrays) */
    for (int64_t j = 0; j < n; j++) {
        real g = grad[j] * k.scale;
        if (k.l2_on) g = g + k.l2 * theta[j];                    /* loop-invariant tests: unswitched */
        if (k.decay_on) theta[j] = theta[j] * k.decay_factor;
        m[j] = k.b1 * m[j] + k.omb1 * g;
        v[j] = k.b2 * v[j] + k.omb2 * g * g;
        theta[j] -= k.step_size * (m[j] / (REAL_SQRT(v[j]) / k.bias2_sqrt + k.eps)); /* in the dtype, as the reference */
    }
}

/* The same order, then torch.optim.SGD: buf = g on the first step, then momentum * buf + g;
 * p -= lr * buf (the host never sets a decoupled decay for SGD; it would be applied) */
HOT static void FN(sgd)(int64_t n, real *restrict theta, const real *restrict grad, real *restrict buf,
                        const FN(step_consts) *kp)
{
    const FN(step_consts) k = *kp;
    for (int64_t j = 0; j < n; j++) {
        real g = grad[j] * k.scale;
        if (k.l2_on) g = g + k.l2 * theta[j];
        if (k.decay_on) theta[j] = theta[j] * k.decay_factor;
        if (buf) {
            buf[j] = k.first ? g : k.momentum * buf[j] + g;
            g = buf[j];
        }
        theta[j] -= k.lr * g;
    }
}

/* Clipping (sumsq: the gradient's sum of squares, used only with clipping) and the
 * SGD/Adam/AdamW update of P parameters, in chunks of CHUNK on `threads` threads. */
static void FN(update)(const lstm_optim *opt, int64_t P, int64_t threads, real *theta, real *slot1, real *slot2,
                       const real *grad, double sumsq)
{
    double scale = 1.0;
    if (opt->clip_norm > 0) /* torch.nn.utils.clip_grad_norm_: g *= min(clip / (norm + 1e-6), 1) */
        scale = fmin(opt->clip_norm / (sqrt(sumsq) + 1e-6), 1.0);
    const int64_t nchunks = ceil_div(P, CHUNK);
    const FN(step_consts) k = FN(consts_of)(opt, scale);
    real *buf = opt->momentum > 0 ? slot1 : NULL;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t ch = 0; ch < nchunks; ch++) {
        const int64_t lo = ch * CHUNK, n = min64(P, lo + CHUNK) - lo;
        if (opt->adam)
            FN(adam)(n, theta + lo, grad + lo, slot1 + lo, slot2 + lo, &k);
        else
            FN(sgd)(n, theta + lo, grad + lo, buf ? buf + lo : NULL, &k);
    }
}

static int FN(check_optim)(const lstm_optim *opt, const real *slot1, const real *slot2)
{
    if (!opt || !(opt->lr > 0) || !(opt->eps > 0)) return LSTM_EARG;
    if (!(opt->l2 >= 0 && isfinite(opt->l2) && isfinite(opt->decay_factor))) return LSTM_EARG; /* (1.0: no decay) */
    if (opt->adam && !(opt->step_size > 0 && opt->bias2_sqrt > 0)) return LSTM_EARG;
    if (opt->adam ? (!slot1 || !slot2) : (opt->momentum > 0 && !slot1)) return LSTM_EARG;
    return LSTM_OK;
}

/* ======================= entry points ======================= */

/* The forward pass of every shard on weights already packed (no loss, no backward). */
static void FN(forward_only)(const FN(work) *w, const real *theta)
{
    if (w->team) {
#pragma omp parallel num_threads(w->threads)
        FN(team_forward)(w, theta, NULL);
    } else {
#pragma omp parallel for schedule(static, 1) num_threads(min64(w->threads, w->S))
        for (int64_t s = 0; s < w->S; s++) FN(shard_forward)(w, s, theta, NULL);
    }
}

/* Forward of every shard (and if grad != NULL: loss, backward, reduced gradient)
 * on a workspace that setup() has carved. */
static int FN(run)(const FN(work) *w, const real *theta, const real *x, const real *y, const int64_t *cls,
                   real *y_hat, real *grad, double *loss)
{
    const int backward = grad != NULL;
    if (!theta || !x || (backward && (!loss || (w->xent ? !cls : !y)))) return LSTM_EARG;
    if (backward && w->xent)
        for (int64_t k = 0; k < w->B * w->Tout; k++)
            if (cls[k] < 0 || cls[k] >= w->O) return LSTM_ECLASS;
    if (!w->reuse_packed || backward) /* (a backward pass needs W^T too, which a forward pass does not pack) */
        FN(pack_weights)(w, theta, backward);
    int64_t valid = w->B * w->Tout; /* predictions: many-to-many counts each row's own steps */
    if (w->len && w->m2m) {
        valid = 0;
        for (int64_t b = 0; b < w->B; b++) valid += w->len[b];
    }
    const int64_t n_terms = w->xent ? valid : valid * w->O;
    const real coef = (real)((w->xent ? 1.0 : 2.0) / (double)n_terms);
    if (w->team) {
#pragma omp parallel num_threads(w->threads)
        {
            FN(team_forward)(w, theta, x);
            if (backward) {
#pragma omp single
                w->loss[0] = FN(shard_loss)(w, 0, y, cls, coef);
                FN(team_backward)(w);
            }
        }
    } else {
#pragma omp parallel for schedule(static, 1) num_threads(min64(w->threads, w->S))
        for (int64_t s = 0; s < w->S; s++) {
            FN(shard_forward)(w, s, theta, x);
            if (backward) {
                w->loss[s] = FN(shard_loss)(w, s, y, cls, coef);
                FN(shard_backward)(w, s);
            }
        }
    }
    if (y_hat) /* (Tout, bm, O) per shard -> (B, Tout, O) */
        for (int64_t s = 0; s < w->S; s++)
            for (int64_t r = 0; r < min64(w->bm, w->B - s * w->bm); r++)
                for (int64_t tt = 0; tt < w->Tout; tt++)
                    memcpy(y_hat + ((s * w->bm + r) * w->Tout + tt) * w->O, w->sh[s].yout + (tt * w->bm + r) * w->O,
                           (size_t)w->O * sizeof(real));
    if (backward) {
        FN(reduce)(w, grad);
        double total = 0.0;
        for (int64_t s = 0; s < w->S; s++) total += w->loss[s]; /* shard order */
        *loss = total / (double)n_terms;
    }
    return LSTM_OK;
}

int FN(lstm_forward)(const lstm_dims *d, const int64_t *offs, int64_t n_params, const real *theta, const real *x,
                     real *y_hat, void *ws, int64_t ws_bytes)
{
    FN(work) w;
    if (!y_hat) return LSTM_EARG;
    int err = FN(setup)(d, offs, n_params, ws, ws_bytes, &w);
    if (err) return err;
    err = FN(run)(&w, theta, x, NULL, NULL, y_hat, NULL, NULL);
    FN(release)(&w, ws, ws_bytes);
    return err;
}

int FN(lstm_loss_grad)(const lstm_dims *d, const int64_t *offs, int64_t n_params, const real *theta, const real *x,
                       const real *y, const int64_t *classes, real *grad, double *loss, void *ws, int64_t ws_bytes)
{
    FN(work) w;
    if (!grad) return LSTM_EARG;
    int err = FN(setup)(d, offs, n_params, ws, ws_bytes, &w);
    if (err) return err;
    err = FN(run)(&w, theta, x, y, classes, NULL, grad, loss);
    FN(release)(&w, ws, ws_bytes);
    return err;
}

/* ======================= generation ======================= */

/* A symbol drawn from softmax(logits / temperature) at the uniform u in [0, 1): the first k
 * whose running sum of exp(s_k - max s) passes u times the total (the inverse CDF), in double
 * and in the order lstmbench.protocol.draw_symbol computes it, so both draw the same symbol. */
static int64_t FN(draw)(const real *logits, int64_t O, double temperature, double u)
{
    double top = -INFINITY, total = 0.0, running = 0.0;
    for (int64_t k = 0; k < O; k++) top = fmax(top, (double)logits[k] / temperature);
    for (int64_t k = 0; k < O; k++) total += exp((double)logits[k] / temperature - top);
    const double target = u * total;
    for (int64_t k = 0; k < O; k++) {
        running += exp((double)logits[k] / temperature - top);
        if (running > target) return k;
    }
    return O - 1;
}

/* Each row's logits after the step just run: the head's output (Tout = 1) of its shard. */
INLINE const real *FN(row_logits)(const FN(work) *w, int64_t b)
{
    return w->sh[b / w->bm].yout + (b % w->bm) * w->O;
}

/* Text generation by a next-symbol model (one-hot input of O symbols, many-to-many): d is one
 * step (steps = 1) of B rows; the rows run their primes (prime_len, B: time-major) symbol by
 * symbol from the state (h, c) (L, B, H), then draw n symbols each into out (n, B), each from
 * the logits of the step before at uniforms (n, B), and feed each back. (h, c) end as the state
 * after the last symbol fed (the last one drawn is not). The weights are packed once; each step
 * is one forward step of the kernel from the state the last one left: no window runs again. */
int FN(lstm_generate)(const lstm_dims *d, const int64_t *offs, int64_t n_params, const real *theta,
                      const int64_t *prime, int64_t prime_len, const double *uniforms, int64_t n, double temperature,
                      int64_t *out, real *h, real *c, void *ws, int64_t ws_bytes)
{
    if (!d || !theta || !prime || !uniforms || !out || !h || !c) return LSTM_EARG;
    if (d->steps != 1 || d->input_size != d->output_size || !d->many_to_many || !d->xent || prime_len < 1 ||
        n < 1 || !(temperature > 0))
        return LSTM_EDIMS;
    const int64_t B = d->batch;
    for (int64_t k = 0; k < prime_len * B; k++)
        if (prime[k] < 0 || prime[k] >= d->input_size) return LSTM_ECLASS;
    lstm_dims step = *d;
    step.lengths = NULL, step.x_symbols = prime, step.drop_keys = step.drop_rows = NULL; /* (no dropout) */
    step.h0 = step.hn = h, step.c0 = step.cn = c; /* the state in, and out: each step starts where the last ended */
    FN(work) w;
    int err = FN(setup)(&step, offs, n_params, ws, ws_bytes, &w);
    if (err) return err;
    FN(pack_weights)(&w, theta, 0);
    for (int64_t k = 0; k + 1 < prime_len + n; k++) {
        w.sym = k < prime_len ? prime + k * B : out + (k - prime_len) * B; /* this step's B symbols */
        FN(forward_only)(&w, theta);
        const int64_t j = k - prime_len + 1; /* the symbol drawn after this step, once the prime has run */
        for (int64_t b = 0; j >= 0 && b < B; b++)
            out[j * B + b] = FN(draw)(FN(row_logits)(&w, b), w.O, temperature, uniforms[j * B + b]);
    }
    FN(release)(&w, ws, ws_bytes);
    return LSTM_OK;
}

/* One fused training step: forward, loss, backward, reduction, clipping, update.
 * slot1/slot2: Adam's m and v, or SGD's momentum buffer (slot1; NULL without momentum). */
int FN(lstm_train_step)(const lstm_dims *d, const lstm_optim *opt, const int64_t *offs, int64_t n_params,
                        real *theta, real *slot1, real *slot2, const real *x, const real *y, const int64_t *classes,
                        real *grad, double *loss, void *ws, int64_t ws_bytes)
{
    FN(work) w;
    if (!grad) return LSTM_EARG;
    int err = FN(check_optim)(opt, slot1, slot2);
    if (err) return err;
    err = FN(setup)(d, offs, n_params, ws, ws_bytes, &w);
    if (err) return err;
    err = FN(run)(&w, theta, x, y, classes, NULL, grad, loss);
    if (!err) {
        double sumsq = 0.0;
        for (int64_t ch = 0; ch < w.nchunks; ch++) sumsq += w.sq[ch]; /* chunk order */
        FN(update)(opt, w.P, w.threads, theta, slot1, slot2, grad, sumsq);
    }
    FN(release)(&w, ws, ws_bytes);
    return err;
}

/* The update alone, for a gradient changed between lstm_loss_grad and the update
 * (summed over processes in data-parallel training): clipping from this gradient's
 * norm (the same chunk sums, in the same order, as the fused step), then SGD/Adam. */
int FN(lstm_update)(const lstm_optim *opt, int64_t n_params, int64_t threads, real *theta, real *slot1, real *slot2,
                    const real *grad)
{
    int err = FN(check_optim)(opt, slot1, slot2);
    if (err) return err;
    if (!theta || !grad) return LSTM_EARG;
    if (n_params < 1 || n_params > (int64_t)MAX_DIM * MAX_DIM || threads < 1) return LSTM_EDIMS;
    double sumsq = 0.0;
    if (opt->clip_norm > 0)
        for (int64_t lo = 0; lo < n_params; lo += CHUNK) /* chunk order */
            sumsq += FN(chunk_sumsq)(grad, lo, min64(n_params, lo + CHUNK));
    FN(update)(opt, n_params, threads, theta, slot1, slot2, grad, sumsq);
    return LSTM_OK;
}

/* C = A @ B for the tests and the GEMM benchmark: A through strides, B (K, ldb)
 * row-major, packed into the workspace first (pack) or read in place (then
 * ldb >= round_up(N, panel width)); `repeats` times, for timing. */
static int64_t FN(matmul_carve)(int64_t K, int64_t N, char *base, real **bp, real **apack)
{
    arena a = {base, 0, 0};
    *bp = take(&a, (int64_t)sizeof(real), K, round_up(N, NR), 1, 1);
    *apack = take(&a, (int64_t)sizeof(real), MC, KC, 1, 1);
    return a.too_big ? -1 : a.used;
}

static int64_t FN(matmul_workspace_bytes)(int64_t K, int64_t N)
{
    real *bp, *apack;
    const int64_t used = FN(matmul_carve)(K, N, NULL, &bp, &apack);
    return used < 0 ? -1 : used + ALIGN;
}

int FN(lstm_matmul)(int64_t M, int64_t N, int64_t K, const real *A, int64_t ars, int64_t acs, const real *B,
                    int64_t ldb, int64_t pack, real *C, int64_t ldc, void *ws, int64_t ws_bytes, int64_t repeats)
{
    if (M < 1 || N < 1 || K < 1 || M > MAX_DIM || N > MAX_DIM || K > MAX_DIM || ldc < N || repeats < 1)
        return LSTM_EDIMS;
    if (!A || !B || !C) return LSTM_EARG;
    if (pack ? ldb < N : ldb < round_up(N, NR)) return LSTM_EDIMS;
    real *Bp, *apack;
    const int64_t need = FN(matmul_carve)(K, N, NULL, &Bp, &apack);
    char *base = need < 0 ? NULL : arena_base(ws, ws_bytes, need);
    if (!base) return LSTM_EWORKSPACE;
    FN(matmul_carve)(K, N, base, &Bp, &apack);
    if (pack) FN(pack_b)(K, N, B, ldb, 1, Bp);
    for (int64_t rep = 0; rep < repeats; rep++)
        FN(gemm)(M, N, K, A, ars, acs, pack ? Bp : B, pack ? 0 : ldb, 0, (int)(pack != 0), C, ldc, 0, apack);
    UNPOISON(ws, ws_bytes);
    return LSTM_OK;
}

#undef NR
#undef MR
#undef KC
#undef MC
