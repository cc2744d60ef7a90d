/* checkpoint/safetensors.h - Hugging Face model directories: safetensors files, config.json,
 * export from and import into the parameter table.
 *
 * safetensors (the format of huggingface/safetensors, written here from its description):
 *   u64 little-endian N | N bytes of JSON header | data
 *   header: {"__metadata__": {"format": "pt"}, "<name>": {"dtype": "F32", "shape": [..],
 *            "data_offsets": [begin, end]}, ...}, offsets relative to the data start.
 * The writer pads the header with spaces so the data starts 8-byte aligned, and lays the
 * tensors out contiguously in table order (the format allows no gaps); every offset is a
 * multiple of 4 (F32), and of 8 while every earlier tensor has an even element count (all of
 * them for an even hidden size).
 * The reader trusts nothing: header length bounded by the file and SAFETENSORS_MAX_HEADER,
 * every dtype, shape and offset range checked against the file before any data is read.
 *
 * Export directory (hf_export), loadable by transformers' DeepseekV3ForCausalLM:
 *   config.json                       DeepseekV3Config fields (hf_write_config)
 *   model.safetensors                 every non-MTP tensor, F32, when they total <= shard_bytes
 *   or model-0000k-of-0000n.safetensors + model.safetensors.index.json ({"metadata":
 *      {"total_size": bytes}, "weight_map": {name: file}}) above that
 *   mtp.safetensors                   the MTP modules (layers >= num_hidden_layers), outside
 *                                     the index: transformers ignores unexpected weights only
 *                                     at layer 61, so they must not be in what it loads
 * Export streams: each file's header is built from the shapes, then every tensor is fetched
 * (hf_export_stream's HfFetch) and written before the next is fetched, so an exporter that
 * reads the checkpoint into one reused buffer needs the largest tensor, not the model.
 * Import (hf_import) reads such a directory (index or single file, plus mtp.safetensors when
 * present), F32 or BF16, into a flat buffer in table order, tensor by tensor straight to its
 * place (pread; BF16 through a 1 MiB buffer), and only the tensors of the given table: a
 * rank's selection (EP, params_select) reads its own experts and nothing else, so --init-from
 * needs no memory beyond the rank's table; hf_config_check (hf_config.c) holds its
 * config.json against the model's config.
 */
#ifndef DSTRAIN_SAFETENSORS_H
#define DSTRAIN_SAFETENSORS_H

#include <stddef.h>

#include "../model/config.h"
#include "../model/params.h"

#define SAFETENSORS_MAX_HEADER ((size_t)100 << 20)
#define SAFETENSORS_MAX_DIMS 8
#define SAFETENSORS_NAME_MAX 256
#define HF_DEFAULT_SHARD_BYTES ((size_t)2 << 30)

typedef enum { ST_F32, ST_BF16, ST_OTHER } StDtype;

/* One tensor to write: numel = prod(shape) floats at data. */
typedef struct StTensor {
    const char *name;
    int ndim;
    long long shape[2];
    const float *data;
} StTensor;

/* One tensor described by a file's header. */
typedef struct StEntry {
    char name[SAFETENSORS_NAME_MAX];
    char dtype_name[16];
    StDtype dtype;
    int ndim;
    long long shape[SAFETENSORS_MAX_DIMS];
    long long begin, end;       /* byte range within the data section, checked against the file */
} StEntry;

typedef struct StFile {
    char path[4096];
    int fd;
    long long data_start;       /* 8 + header length */
    int n;
    StEntry *entries;           /* (n), header order */
} StFile;

/* Write a whole safetensors file (F32), fsynced. */
int st_write_file(const char *path, const StTensor *t, int n, char *err, size_t errlen);
/* Supplies tensor i's values for st_write_stream: *data = its numel floats, valid until the
 * next call. 0, or -1 with its own message in err. */
typedef int (*StSource)(void *ctx, int i, const float **data, char *err, size_t errlen);
/* The same, tensor by tensor: the header from the shapes first, then each tensor's data as
 * src (when non-NULL; t[i].data otherwise) gives it, so only one tensor need be in memory. */
int st_write_stream(const char *path, const StTensor *t, int n, StSource src, void *ctx, char *err, size_t errlen);
/* Open and check a file's header. On failure f is left closed (st_close is still safe). */
int st_open(const char *path, StFile *f, char *err, size_t errlen);
/* Read entry e (F32 or BF16) as floats into out (numel floats). */
int st_read_f32(const StFile *f, const StEntry *e, float *out, char *err, size_t errlen);
void st_close(StFile *f);

/* config.json for model c (DeepseekV3Config names; every [model] key, rope_scaling a dict or
 * null, rope_interleave true, topk_method "noaux_tc", scoring_func "sigmoid", F32). */
int hf_write_config(const char *path, const ModelConfig *c, char *err, size_t errlen);
/* The export directory above from params (table order). shard_bytes 0 means
 * HF_DEFAULT_SHARD_BYTES. Refuses what transformers' DeepseekV3 would compute differently:
 * attention = gqa, tied embeddings, and group-limited routing that scores a group by other
 * than its 2 best experts (num_experts_per_tok / topk_group != 2 while topk_group < n_group)
 * or groups of fewer than 2 experts. */
int hf_export(const char *out_dir, const ModelConfig *c, const ParamTable *t, const float *params,
              size_t shard_bytes, char *err, size_t errlen);
/* Supplies table entry p's values for hf_export_stream: *data = its numel floats, valid until
 * the next call. 0, or -1 with its own message in err. */
typedef int (*HfFetch)(void *ctx, const Param *p, const float **data, char *err, size_t errlen);
/* hf_export with the values fetched one tensor at a time, in file order (each exactly once;
 * table order within a file), each written before the next is fetched: with a fetch that
 * reads into one reused buffer, memory stays at the largest tensor (runtime/export.c). */
int hf_export_stream(const char *out_dir, const ModelConfig *c, const ParamTable *t, HfFetch fetch, void *ctx,
                     size_t shard_bytes, char *err, size_t errlen);
/* Read every table tensor from an HF directory into params (t->total floats); a missing
 * tensor, a shape mismatch or a tensor the table lacks is an error naming it. */
int hf_import(const char *dir, const ParamTable *t, float *params, char *err, size_t errlen);
/* The same, but with mtp_missing non-NULL a directory without any MTP tensor (a transformers
 * save_pretrained: its config says num_nextn_predict_layers but it never holds those weights)
 * is accepted: the MTP tensors keep what params held and *mtp_missing = 1. Some but not all
 * of them missing is still an error. */
int hf_import_tensors(const char *dir, const ParamTable *t, float *params, int *mtp_missing, char *err,
                      size_t errlen);
/* The rule hf_export applies to routing (above), for export and import alike; verb starts the
 * message ("export", "init-from"). */
int hf_check_router(const char *verb, const ModelConfig *c, char *err, size_t errlen);
/* Compares the config.json at path with c: every [model] hyper-parameter that decides what
 * the model computes (shapes, routing, rope and YaRN, eps; not initializer_range, which only
 * decides a fresh initialisation, nor the gqa-only keys), plus the transformers fields whose
 * other values dstrain does not compute (hidden_act, scoring_func, topk_method,
 * rope_interleave, attention_bias). The first difference is an error naming the key and both
 * values; so is a missing key. For YaRN the compared quantities are the ones transformers
 * computes with: the cos/sin scale (attention_factor, or what transformers derives without
 * it) and the softmax scale's mscale_all_dim (absent means 0 there). */
int hf_config_check(const char *path, const ModelConfig *c, char *err, size_t errlen);

#endif
