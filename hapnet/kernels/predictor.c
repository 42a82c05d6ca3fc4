/* The fused CPU kernels of the visit predictor (hapnet/predictor.py and hapnet/gru.py, whose
 * torch operations compute the same and are the reference):
 *
 *   paper_loss_forward / _backward: the paper loss of every step (row) of the logits,
 *     L_r = -sum_c [y_rc log p_rc + (1 - y_rc) log(1 - p_rc)],  p_r = softmax(z_r),
 *     p clamped to at most `clamp` inside log(1 - p), with the targets y as (row, code) pairs;
 *   gru_forward_step / gru_backward_step: the gate arithmetic of one time step of a GRU (gates
 *     r, z, n as torch.nn.GRU orders them), around the recurrent matrix product torch does.
 *
 * Rows are float32, contiguous. Built and loaded like propagation.c (hapnet/native.py); OpenMP
 * splits rows between threads, and no two threads write one row, so results do not depend on
 * timing. Functions return 0.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#define PARALLEL_MIN 32768 /* elements below which one thread is faster */

/* p [R, C] = softmax of logits [R, C] per row; loss [R] = -sum_c log(1 - min(p, clamp)) plus, for
 * each target (rows[m], codes[m]), log(1 - min(p, clamp)) - log p at it (log p exactly, from the
 * logits). A row's targets are distinct (a visit's codes are). */
int paper_loss_forward(const float *logits, int64_t R, int64_t C, const int64_t *rows,
                       const int64_t *codes, int64_t M, float clamp, float *p, float *loss,
                       float *log_sum, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (R * C >= PARALLEL_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *z = logits + r * C;
        float *q = p + r * C;
        float top = -FLT_MAX;
        for (int64_t c = 0; c < C; c++) top = z[c] > top ? z[c] : top;
        float total = 0.f;
        for (int64_t c = 0; c < C; c++) {
            q[c] = expf(z[c] - top);
            total += q[c];
        }
        float scale = 1.f / total, sum = 0.f;
        for (int64_t c = 0; c < C; c++) {
            q[c] *= scale;
            sum += logf(1.f - fminf(q[c], clamp));
        }
        loss[r] = -sum;
        log_sum[r] = top + logf(total); /* log p_c = z_c - log_sum */
    }
    for (int64_t m = 0; m < M; m++) {
        int64_t r = rows[m], c = codes[m];
        loss[r] += logf(1.f - fminf(p[r * C + c], clamp)) - (logits[r * C + c] - log_sum[r]);
    }
    return 0;
}

/* grad_logits [R, C] from grad_loss [R] and the forward's p: with a_c = p_c / (1 - p_c) (0 where
 * p_c > clamp) off target and a_c = -1 on target, dL/dz_c = g (a_c - p_c sum_c' a_c'). */
int paper_loss_backward(const float *grad_loss, const float *p, int64_t R, int64_t C,
                        const int64_t *rows, const int64_t *codes, int64_t M, float clamp,
                        float *grad_logits, float *sum_a, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (R * C >= PARALLEL_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *q = p + r * C;
        float *a = grad_logits + r * C, sum = 0.f;
        for (int64_t c = 0; c < C; c++) {
            a[c] = q[c] > clamp ? 0.f : q[c] / (1.f - q[c]);
            sum += a[c];
        }
        sum_a[r] = sum;
    }
    for (int64_t m = 0; m < M; m++) {
        float *a = grad_logits + rows[m] * C + codes[m];
        sum_a[rows[m]] += -1.f - *a;
        *a = -1.f;
    }
#pragma omp parallel for schedule(static) num_threads(num_threads) if (R * C >= PARALLEL_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *q = p + r * C;
        float *a = grad_logits + r * C, g = grad_loss[r], s = sum_a[r];
        for (int64_t c = 0; c < C; c++) a[c] = g * (a[c] - q[c] * s);
    }
    return 0;
}

/* One step of `size` rows, H = hidden size. gx [size, 3H] = W_i x + b_i; gh [size, 3H] =
 * W_h h_prev + b_h (gh_stride 0: the same row for all, step 0's bias); h_prev [size, H] (NULL:
 * zeros). Writes rz [size, 2H] (sigmoid gates r, z), n [size, H], hn [size, H] (W_hn h + b_hn)
 * and h [size, H] = (1 - z) n + z h_prev. Loops are kept simple so that they vectorise (expf and
 * tanhf from glibc's vector math library). */
int gru_forward_step(int64_t size, int64_t H, const float *gx, const float *gh, int64_t gh_stride,
                     const float *h_prev, float *rz, float *n, float *hn, float *h,
                     int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (size * H >= PARALLEL_MIN)
    for (int64_t i = 0; i < size; i++) {
        const float *restrict x = gx + i * 3 * H, *restrict g = gh + i * gh_stride;
        float *restrict r = rz + i * 2 * H, *restrict z = r + H, *restrict ni = n + i * H;
        float *restrict hni = hn + i * H, *restrict hi = h + i * H;
        for (int64_t j = 0; j < 2 * H; j++) r[j] = 1.f / (1.f + expf(-(x[j] + g[j])));
        for (int64_t j = 0; j < H; j++) {
            hni[j] = g[2 * H + j];
            ni[j] = tanhf(x[2 * H + j] + r[j] * hni[j]);
        }
        if (h_prev) {
            const float *restrict previous = h_prev + i * H;
            for (int64_t j = 0; j < H; j++) hi[j] = ni[j] + z[j] * (previous[j] - ni[j]);
        } else {
            for (int64_t j = 0; j < H; j++) hi[j] = ni[j] - z[j] * ni[j];
        }
    }
    return 0;
}

/* Backward of one step (h_prev: zeros at step 0). grad_h [size, H]: d loss / d h of the step (its output's gradient plus
 * what the next step carried back), in place. Writes grad_gx [size, 3H] (d loss / d (W_i x +
 * b_i)), grad_gh [size, 3H] (d loss / d (W_h h_prev + b_h)), and grad_h * z into grad_h, the
 * part of d loss / d h_prev that does not go through W_h. */
int gru_backward_step(int64_t size, int64_t H, float *grad_h, const float *rz, const float *n,
                      const float *hn, const float *h_prev, float *grad_gx, float *grad_gh,
                      int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (size * H >= PARALLEL_MIN)
    for (int64_t i = 0; i < size; i++) {
        float *restrict dh = grad_h + i * H, *restrict gx = grad_gx + i * 3 * H;
        float *restrict gh = grad_gh + i * 3 * H;
        const float *restrict r = rz + i * 2 * H, *restrict z = r + H, *restrict ni = n + i * H;
        const float *restrict hni = hn + i * H;
        const float *restrict previous = h_prev + i * H;
#pragma omp simd
        for (int64_t j = 0; j < H; j++) {
            float d_n = dh[j] * (1.f - z[j]) * (1.f - ni[j] * ni[j]);
            float d_z = dh[j] * (previous[j] - ni[j]) * z[j] * (1.f - z[j]);
            float d_r = d_n * hni[j] * r[j] * (1.f - r[j]);
            gx[j] = d_r;
            gh[j] = d_r;
            gx[H + j] = d_z;
            gh[H + j] = d_z;
            gx[2 * H + j] = d_n;
            gh[2 * H + j] = d_n * r[j];
            dh[j] *= z[j];
        }
    }
    return 0;
}
