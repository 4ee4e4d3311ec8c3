/* The C kernel's interface: what lstm.c exports and Python calls through cffi.
 *
 * build_ffi.py hands the lines between the markers below to cffi's cdef, so they
 * must stay plain declarations (no macros, no #if).
 *
 * Arrays are row-major and contiguous; the Python side checks every shape, dtype
 * and contiguity before it calls in, and each function still checks the sizes it
 * is given and returns a nonzero LSTM_E* code instead of touching memory it was
 * not given. lstm_error_message() turns the code into a sentence.
 *
 * Nothing here keeps state between calls: every buffer comes in as an argument
 * (the workspace included), so calls on different workspaces may run at once.
 */
#ifndef LSTM_API_H
#define LSTM_API_H

#include <stdint.h>

/* cdef-begin */
typedef struct {
    int64_t batch;         /* B */
    int64_t steps;         /* T */
    int64_t input_size;    /* D */
    int64_t hidden_size;   /* H */
    int64_t output_size;   /* O */
    int64_t layers;        /* L */
    int64_t many_to_many;  /* 1: head on every h_t; 0: on h_T only */
    int64_t xent;          /* 1: softmax cross-entropy on class ids; 0: mean squared error */
    int64_t threads;       /* at most this many threads */
    int64_t parallel;      /* how they share the work: 0 auto, 1 batch shards, 2 hidden units (lstm.c) */
    const int64_t *x_symbols; /* NULL, or (B, T) symbol ids when every x_t is one-hot (x_t = e_s): then
                                 x_t @ W_x is row s of W_x (a copy) and dW_x a sum of dz rows */
    int64_t shard_rows;    /* rows per batch shard; 0: by the shape (lstm.c: shard_plan). Never by
                              the thread count: any number of threads gives the same bits */
    const int64_t *lengths; /* NULL, or (B,) steps each row takes, 1 <= len <= T, longest first within
                               each batch shard (the host orders the rows: lstmbench.fused.RowOrder):
                               row b takes no step t >= len_b (design.md 8) */
    const void *h0, *c0;   /* NULL, or (L, B, H) initial state in the model's dtype (NULL: zeros) */
    void *hn, *cn;         /* NULL, or (L, B, H): each row's state after its own last step is written here */
    int64_t reuse_packed;  /* 1: the workspace holds this theta's packed weights from its last call (the host
                              promises it: a run of forward passes with fixed parameters); 0: pack them */
    /* Dropout (design.md 9), drawn in the kernel from a hash: element j of kernel row k at step t of
       site s (s = l: the input of layer l, 1 <= l < L; s = L: the head's input) is kept iff
       fmix32(((drop_rows[k] * T + t) * H + j) ^ drop_keys[s]) >= drop_threshold (uint32, wrapping),
       and a kept value is multiplied by drop_scale; a many-to-one head's t is the row's last step. */
    int64_t dropout;       /* 1: the workspace has room for the masked layer outputs (set when it is sized:
                              a model with p > 0); 0: none, and no call of it may have dropout */
    const uint32_t *drop_keys; /* NULL: this call has no dropout; else (L+1,) each site's key ([0] unused) */
    const uint32_t *drop_rows; /* (B,) each kernel row's index in the global minibatch (with drop_keys) */
    uint32_t drop_threshold;   /* floor(p 2^32) */
    double drop_scale;         /* 1 / (1 - p), already rounded to the model's dtype */
} lstm_dims;

/* One step's optimizer constants, computed by the host once per step in double
 * (lstmbench.optim.step_scalars: bias corrections included); the kernel only rounds
 * them to its dtype. */
typedef struct {
    int64_t adam;          /* 1: Adam (AdamW too: its decay is decay_factor); 0: SGD (with momentum if momentum > 0) */
    int64_t first_step;    /* 1 on the first step: SGD's momentum buffer starts as the gradient */
    double lr;
    double momentum;
    double beta1;
    double beta2;
    double one_minus_beta1;
    double one_minus_beta2;
    double step_size;      /* lr / (1 - beta1^step) */
    double bias2_sqrt;     /* sqrt(1 - beta2^step) */
    double eps;
    double clip_norm;      /* <= 0: no clipping of the global gradient norm */
    double l2;             /* SGD's and Adam's weight decay: g += l2 * theta after clipping (0: none) */
    double decay_factor;   /* AdamW's: theta *= decay_factor (1 - lr w) before the update (exactly 1: none) */
} lstm_optim;

const char *lstm_source_hash(void);
const char *lstm_build_info(void);
const char *lstm_isa(void);
const char *lstm_error_message(int code);
int lstm_openmp(void);
int lstm_vector_bytes(void);     /* of the micro-kernel's vectors: 32 (_lstm_c) or 64 (_lstm_c_avx512) */
int lstm_cpu_has_avx512(void);   /* 1 if this CPU has AVX-512 (F, BW, CD, DQ, VL: x86-64-v4) */
int64_t lstm_panel_width(int64_t dtype_size);
int64_t lstm_workspace_bytes(const lstm_dims *d, int64_t dtype_size);
int lstm_parallel_plan(const lstm_dims *d, int64_t dtype_size);  /* LSTM_PAR_SHARDS or _UNITS, or -1 */
int64_t lstm_shard_rows(const lstm_dims *d, int64_t dtype_size);  /* rows per batch shard (B: one), or -1 */
int64_t lstm_matmul_workspace_bytes(int64_t K, int64_t N, int64_t dtype_size);

int lstm_forward_f32(const lstm_dims *d, const int64_t *offs, int64_t n_params, const float *theta,
                     const float *x, float *y_hat, void *ws, int64_t ws_bytes);
int lstm_forward_f64(const lstm_dims *d, const int64_t *offs, int64_t n_params, const double *theta,
                     const double *x, double *y_hat, void *ws, int64_t ws_bytes);

int lstm_loss_grad_f32(const lstm_dims *d, const int64_t *offs, int64_t n_params, const float *theta,
                       const float *x, const float *y, const int64_t *classes, float *grad, double *loss,
                       void *ws, int64_t ws_bytes);
int lstm_loss_grad_f64(const lstm_dims *d, const int64_t *offs, int64_t n_params, const double *theta,
                       const double *x, const double *y, const int64_t *classes, double *grad, double *loss,
                       void *ws, int64_t ws_bytes);

int lstm_train_step_f32(const lstm_dims *d, const lstm_optim *opt, const int64_t *offs, int64_t n_params,
                        float *theta, float *slot1, float *slot2, const float *x, const float *y,
                        const int64_t *classes, float *grad, double *loss, void *ws, int64_t ws_bytes);
int lstm_train_step_f64(const lstm_dims *d, const lstm_optim *opt, const int64_t *offs, int64_t n_params,
                        double *theta, double *slot1, double *slot2, const double *x, const double *y,
                        const int64_t *classes, double *grad, double *loss, void *ws, int64_t ws_bytes);

int lstm_generate_f32(const lstm_dims *d, const int64_t *offs, int64_t n_params, const float *theta,
                      const int64_t *prime, int64_t prime_len, const double *uniforms, int64_t n, double temperature,
                      int64_t *out, float *h, float *c, void *ws, int64_t ws_bytes);
int lstm_generate_f64(const lstm_dims *d, const int64_t *offs, int64_t n_params, const double *theta,
                      const int64_t *prime, int64_t prime_len, const double *uniforms, int64_t n, double temperature,
                      int64_t *out, double *h, double *c, void *ws, int64_t ws_bytes);

int lstm_update_f32(const lstm_optim *opt, int64_t n_params, int64_t threads, float *theta, float *slot1, float *slot2,
                    const float *grad);
int lstm_update_f64(const lstm_optim *opt, int64_t n_params, int64_t threads, double *theta, double *slot1,
                    double *slot2, const double *grad);

int lstm_matmul_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t a_row_stride, int64_t a_col_stride,
                    const float *B, int64_t ldb, int64_t pack_b, float *C, int64_t ldc, void *ws,
                    int64_t ws_bytes, int64_t repeats);
int lstm_matmul_f64(int64_t M, int64_t N, int64_t K, const double *A, int64_t a_row_stride,
                    int64_t a_col_stride, const double *B, int64_t ldb, int64_t pack_b, double *C, int64_t ldc,
                    void *ws, int64_t ws_bytes, int64_t repeats);
/* cdef-end */

/* Return codes. */
#define LSTM_OK 0
#define LSTM_EDIMS 1       /* a size is < 1, or too large */
#define LSTM_ELAYOUT 2     /* offs / n_params are not the canonical flat layout */
#define LSTM_EWORKSPACE 3  /* the workspace is smaller than lstm_workspace_bytes() */
#define LSTM_ECLASS 4      /* a class id is outside [0, output_size) */
#define LSTM_EARG 5        /* a required pointer is NULL, or an optimizer setting is invalid */
#define LSTM_ELENGTHS 6    /* a length is outside [1, T], or a shard's lengths are not longest first */

/* lstm_dims.parallel */
#define LSTM_PAR_AUTO 0
#define LSTM_PAR_SHARDS 1
#define LSTM_PAR_UNITS 2

#endif
