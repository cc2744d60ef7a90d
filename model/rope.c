/* model/rope.c - RoPE frequency tables with optional YaRN, and the attention softmax scale.
 *
 * Interleaved pairs (x[2j], x[2j+1]) rotate by t * theta^(-2j/Dr) (SPEC.md section 3; the
 * order of DeepSeek's released weights). YaRN (TR section 4.3, the rope_scaling of the HF
 * config): frequencies between the correction dims of beta_fast and beta_slow are blended
 * from interpolated (freq / factor) to original by a linear ramp; the softmax scale gains
 * mscale^2 with mscale = 0.1 * mscale_all_dim * ln(factor) + 1. Applied whenever
 * rope_scaling.type = "yarn" (as transformers does; DeepSeek's inference code applies it only
 * when the sequence exceeds the original length). The cos/sin tables carry the ratio
 * mscale(factor, mscale) / mscale(factor, mscale_all_dim) as DeepSeek's code does (1 for V3;
 * transformers agrees only when both are non-zero or attention_factor is given).
 */
#include <math.h>
#include <string.h>

#include "layers.h"

static double yarn_mscale(double factor, double m)
{
    return factor <= 1.0 ? 1.0 : 0.1 * m * log(factor) + 1.0;
}

double rope_yarn_table_scale(const RopeScaling *rs)
{
    /* DeepSeek's ratio, also when mscale or mscale_all_dim is 0 (yarn_mscale(f, 0) = 1);
     * transformers takes it only when both are non-zero, hence export's attention_factor */
    return yarn_mscale(rs->factor, rs->mscale) / yarn_mscale(rs->factor, rs->mscale_all_dim);
}

/* The dimension index (in [0, Dr)) at which a frequency completes num_rot rotations over the
 * original context. */
static double yarn_correction_dim(double num_rot, int Dr, double base, double max_pos)
{
    return (Dr * log(max_pos / (num_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

void rope_tables(const ModelConfig *c, int T, float *cos_host, float *sin_host, float *attn_scale)
{
    const int Dr = c->qk_rope_head_dim, half = Dr / 2;
    const double base = c->rope_theta;
    const RopeScaling *rs = &c->rope_scaling;
    const int yarn = strcmp(rs->type, "yarn") == 0;
    double inv_freq[half > 0 ? half : 1];
    double low = 0, high = 0, table_scale = 1.0;
    if (yarn) {
        low = floor(yarn_correction_dim(rs->beta_fast, Dr, base, rs->original_max_position_embeddings));
        high = ceil(yarn_correction_dim(rs->beta_slow, Dr, base, rs->original_max_position_embeddings));
        if (low < 0) low = 0;
        if (high > Dr - 1) high = Dr - 1;
        if (high == low) high += 0.001;   /* avoid a zero-width ramp */
        table_scale = rope_yarn_table_scale(rs);
    }
    for (int j = 0; j < half; j++) {
        double f = pow(base, -2.0 * j / Dr);
        if (yarn) {
            double ramp = (j - low) / (high - low);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double keep = 1.0 - ramp;   /* 1: extrapolate (original), 0: interpolate */
            f = f / rs->factor * (1.0 - keep) + f * keep;
        }
        inv_freq[j] = f;
    }
    for (int t = 0; t < T; t++)
        for (int j = 0; j < half; j++) {
            double a = t * inv_freq[j];
            cos_host[t * half + j] = (float)(cos(a) * table_scale);
            sin_host[t * half + j] = (float)(sin(a) * table_scale);
        }
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    if (yarn) {
        double m = yarn_mscale(rs->factor, rs->mscale_all_dim);
        scale *= m * m;
    }
    *attn_scale = (float)scale;
}
