/* A tiny TFLite external delegate for edgeship's tests (built with gcc by the tests).
 *
 * It is loaded exactly like a real delegate (libedgetpu, the GPU delegate):
 * through `load_delegate(path, options)`, which calls the two plugin entry
 * points below, as TensorFlow Lite's "dummy external delegate" does.
 *
 * Options (all optional):
 *   ops=ADD,MUL,SUB   builtin ops to claim (names or builtin codes); default ADD
 *   fail=1            tflite_plugin_create_delegate fails (returns NULL)
 *   report=PATH       write "claimed=N partitions=P ops=..." to PATH after Prepare
 *   name=NAME         name of the delegate kernel (default EdgeshipDummyDelegate)
 *   device=SPEC       accepted and ignored (as libedgetpu's device=usb:0)
 *
 * Claimed nodes are float32 element-wise ADD/MUL/SUB without a fused
 * activation, with equal-sized inputs or one single-element input; the kernel
 * really computes them, so results must match the CPU.
 *
 * The struct layouts below are copied (field order only, the fields we need
 * and everything before them) from TensorFlow Lite's
 * tensorflow/lite/core/c/common.h; they are "semi-ABI stable" (fields are only
 * appended), which is what makes external delegates work across builds.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- layouts from tensorflow/lite/core/c/common.h ------------------------------ */

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
enum { kTfLiteFloat32 = 1 };
enum { kBuiltinAdd = 0, kBuiltinMul = 18, kBuiltinSub = 41, kBuiltinDelegate = 51 };

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct { float scale; int32_t zero_point; } TfLiteQuantizationParams;
typedef struct { int type; void* params; } TfLiteQuantization;

typedef struct TfLiteTensor {
  int type;
  union { float* f; void* data; } data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

struct TfLiteContext;
struct TfLiteDelegate;

typedef struct TfLiteRegistration {
  void* (*init)(struct TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(struct TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(struct TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(struct TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const struct TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* (*async_kernel)(struct TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
} TfLiteRegistration;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor, TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext*, int tensors_to_add, int* first_new_tensor_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index, TfLiteNode** node,
                                         TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext*, TfLiteRegistration registration,
                                                        const TfLiteIntArray* nodes_to_replace,
                                                        struct TfLiteDelegate* delegate);
  /* ... further fields are not used here ... */
} TfLiteContext;

typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int, TfLiteTensor*);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int, TfLiteTensor*);
  void (*FreeBufferHandle)(TfLiteContext*, struct TfLiteDelegate*, int*);
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;

/* ---- the delegate ------------------------------------------------------------------ */

#define MAX_OPS 16
#define MAX_NODES 1024

typedef struct {
  int ops[MAX_OPS];
  int n_ops;
  char report[1024];
  char name[128];
} DummyOptions;

/* Process-wide counters, readable with ctypes from the same library. */
static int g_claimed = 0;     /* nodes claimed by the last Prepare */
static int g_partitions = 0;  /* delegate kernels (partitions) the runtime created */
static long g_evals = 0;      /* delegated nodes computed by this kernel */
static int g_created = 0;     /* live delegates */

int dummy_claimed_nodes(void) { return g_claimed; }
int dummy_partitions(void) { return g_partitions; }
long dummy_evaluated_nodes(void) { return g_evals; }
int dummy_live_delegates(void) { return g_created; }

static int op_code(const char* s) {
  if (!strcmp(s, "ADD")) return kBuiltinAdd;
  if (!strcmp(s, "MUL")) return kBuiltinMul;
  if (!strcmp(s, "SUB")) return kBuiltinSub;
  char* end = NULL;
  long v = strtol(s, &end, 10);
  if (end != s && *end == '\0') return (int)v;
  return -1;
}

static int wanted(const DummyOptions* o, int code) {
  for (int i = 0; i < o->n_ops; i++)
    if (o->ops[i] == code) return 1;
  return 0;
}

static size_t elements(const TfLiteTensor* t) {
  size_t n = 1;
  if (!t->dims) return 0;
  for (int i = 0; i < t->dims->size; i++) n *= (size_t)t->dims->data[i];
  return n;
}

/* A float32 tensor whose byte count agrees with its dims (also a layout check). */
static int float_ok(const TfLiteTensor* t) {
  return t->type == kTfLiteFloat32 && t->dims && t->bytes == elements(t) * sizeof(float);
}

static int supported(TfLiteContext* ctx, const TfLiteNode* node, const TfLiteRegistration* reg) {
  if (reg->builtin_code != kBuiltinAdd && reg->builtin_code != kBuiltinMul && reg->builtin_code != kBuiltinSub)
    return 0;
  if (!node->inputs || node->inputs->size != 2 || !node->outputs || node->outputs->size != 1) return 0;
  if (node->builtin_data && *(const int*)node->builtin_data != 0) return 0; /* fused activation */
  const TfLiteTensor* a = &ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor* b = &ctx->tensors[node->inputs->data[1]];
  const TfLiteTensor* y = &ctx->tensors[node->outputs->data[0]];
  if (!float_ok(a) || !float_ok(b) || !float_ok(y)) return 0;
  size_t na = elements(a), nb = elements(b), ny = elements(y);
  if (!((na == ny && (nb == ny || nb == 1)) || (nb == ny && na == 1))) return 0;
  return 1;
}

typedef struct { int code, a, b, y; } KOp;
/* Tensors inside a delegated partition are not allocated by the runtime (only
 * the partition's inputs and outputs are): the kernel keeps its own buffers. */
typedef struct { int n, n_scratch; int scratch_idx[2 * MAX_NODES]; float* scratch[2 * MAX_NODES]; KOp op[]; } Kernel;

static float* tensor_data(Kernel* k, TfLiteTensor* t, int idx) {
  if (t->data.f) return t->data.f;
  for (int i = 0; i < k->n_scratch; i++)
    if (k->scratch_idx[i] == idx) return k->scratch[i];
  if (k->n_scratch >= 2 * MAX_NODES) return NULL;
  float* buf = (float*)calloc(elements(t) ? elements(t) : 1, sizeof(float));
  if (!buf) return NULL;
  k->scratch_idx[k->n_scratch] = idx;
  k->scratch[k->n_scratch++] = buf;
  return buf;
}

static void* kernel_init(TfLiteContext* ctx, const char* buffer, size_t length) {
  (void)length;
  const TfLiteDelegateParams* p = (const TfLiteDelegateParams*)buffer;
  int n = p->nodes_to_replace->size;
  if (n > MAX_NODES) return NULL;
  Kernel* k = (Kernel*)calloc(1, sizeof(Kernel) + sizeof(KOp) * (size_t)n);
  if (!k) return NULL;
  k->n = n;
  for (int i = 0; i < n; i++) {
    TfLiteNode* node;
    TfLiteRegistration* reg;
    ctx->GetNodeAndRegistration(ctx, p->nodes_to_replace->data[i], &node, &reg);
    k->op[i].code = reg->builtin_code;
    k->op[i].a = node->inputs->data[0];
    k->op[i].b = node->inputs->data[1];
    k->op[i].y = node->outputs->data[0];
  }
  g_partitions++;
  return k;
}

static void kernel_free(TfLiteContext* ctx, void* buffer) {
  (void)ctx;
  Kernel* k = (Kernel*)buffer;
  if (k)
    for (int i = 0; i < k->n_scratch; i++) free(k->scratch[i]);
  free(k);
}

static TfLiteStatus kernel_prepare(TfLiteContext* ctx, TfLiteNode* node) {
  (void)ctx;
  Kernel* k = (Kernel*)node->user_data;
  if (!k) return kTfLiteError;
  /* shapes may have changed (batch resize): drop the scratch buffers, re-made at the next invoke */
  for (int i = 0; i < k->n_scratch; i++) free(k->scratch[i]);
  k->n_scratch = 0;
  return kTfLiteOk;
}

static TfLiteStatus kernel_invoke(TfLiteContext* ctx, TfLiteNode* node) {
  Kernel* k = (Kernel*)node->user_data;
  for (int i = 0; i < k->n; i++) {
    const KOp* op = &k->op[i];
    TfLiteTensor* a = &ctx->tensors[op->a];
    TfLiteTensor* b = &ctx->tensors[op->b];
    TfLiteTensor* y = &ctx->tensors[op->y];
    size_t n = elements(y), na = elements(a), nb = elements(b);
    const float* pa = tensor_data(k, a, op->a);
    const float* pb = tensor_data(k, b, op->b);
    float* py = tensor_data(k, y, op->y);
    if (!pa || !pb || !py) {
      ctx->ReportError(ctx, "EdgeshipDummyDelegate: unallocated tensor");
      return kTfLiteError;
    }
    for (size_t j = 0; j < n; j++) {
      float x0 = pa[na == 1 ? 0 : j], x1 = pb[nb == 1 ? 0 : j];
      py[j] = op->code == kBuiltinAdd ? x0 + x1 : op->code == kBuiltinMul ? x0 * x1 : x0 - x1;
    }
    g_evals++;
  }
  return kTfLiteOk;
}

static TfLiteStatus delegate_prepare(TfLiteContext* ctx, TfLiteDelegate* delegate) {
  const DummyOptions* o = (const DummyOptions*)delegate->data_;
  TfLiteIntArray* plan;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray* claim = (TfLiteIntArray*)malloc(sizeof(int) * (size_t)(plan->size + 1));
  if (!claim) return kTfLiteError;
  claim->size = 0;
  char names[1024] = "";
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode* node;
    TfLiteRegistration* reg;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    if (wanted(o, reg->builtin_code) && supported(ctx, node, reg)) {
      claim->data[claim->size++] = plan->data[i];
      char item[32];
      snprintf(item, sizeof item, "%s%d", names[0] ? "," : "", plan->data[i]);
      strncat(names, item, sizeof names - strlen(names) - 1);
    }
  }
  g_claimed = claim->size;
  g_partitions = 0;
  TfLiteStatus st = kTfLiteOk;
  if (claim->size > 0) {
    TfLiteRegistration reg;
    memset(&reg, 0, sizeof reg);
    reg.init = kernel_init;
    reg.free = kernel_free;
    reg.prepare = kernel_prepare;
    reg.invoke = kernel_invoke;
    reg.builtin_code = kBuiltinDelegate;
    reg.custom_name = o->name;
    reg.version = 1;
    st = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, reg, claim, delegate);
  }
  if (o->report[0]) {
    FILE* f = fopen(o->report, "w");
    if (f) {
      fprintf(f, "claimed=%d partitions=%d nodes=%s\n", claim->size, g_partitions, names);
      fclose(f);
    }
  }
  free(claim);
  return st;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  DummyOptions* o = (DummyOptions*)calloc(1, sizeof(DummyOptions));
  if (!o) return NULL;
  strcpy(o->name, "EdgeshipDummyDelegate");
  o->ops[o->n_ops++] = kBuiltinAdd;
  for (size_t i = 0; i < n; i++) {
    const char* k = keys[i];
    const char* v = values[i];
    if (!strcmp(k, "fail") && strcmp(v, "0") != 0) {
      if (report_error) report_error("EdgeshipDummyDelegate: creation failed because fail=1 was passed");
      free(o);
      return NULL;
    } else if (!strcmp(k, "ops")) {
      char buf[256];
      strncpy(buf, v, sizeof buf - 1);
      buf[sizeof buf - 1] = '\0';
      o->n_ops = 0;
      for (char* tok = strtok(buf, ",+ "); tok && o->n_ops < MAX_OPS; tok = strtok(NULL, ",+ ")) {
        int c = op_code(tok);
        if (c < 0) {
          if (report_error) report_error("EdgeshipDummyDelegate: unknown op in ops= (use ADD, MUL, SUB or codes)");
          free(o);
          return NULL;
        }
        o->ops[o->n_ops++] = c;
      }
    } else if (!strcmp(k, "report")) {
      strncpy(o->report, v, sizeof o->report - 1);
    } else if (!strcmp(k, "device")) {
      /* accepted like the Edge TPU delegate's device=usb:0 option; nothing to select here */
    } else if (!strcmp(k, "name")) {
      strncpy(o->name, v, sizeof o->name - 1);
    } else {
      if (report_error) report_error("EdgeshipDummyDelegate: unknown option (known: ops, fail, report, name, device)");
      free(o);
      return NULL;
    }
  }
  TfLiteDelegate* d = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  if (!d) {
    free(o);
    return NULL;
  }
  d->data_ = o;
  d->Prepare = delegate_prepare;
  d->flags = 0;
  g_created++;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* d) {
  if (!d) return;
  free(d->data_);
  free(d);
  g_created--;
}
