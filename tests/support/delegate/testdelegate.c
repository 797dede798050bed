/* A real TFLite external delegate for the tests (built with the system C compiler at test time).
 *
 * The external-delegate plugin ABI: tflite_plugin_create_delegate(keys, values, n, report_error)
 * returns a TfLiteDelegate*, tflite_plugin_destroy_delegate frees it. The few TFLite structs it
 * touches are declared here by their first fields (TFLite keeps them "semi-ABI stable": fields are
 * only appended), so no TensorFlow headers are needed.
 *
 * Options (all strings):
 *   record=PATH   append one line per create/prepare/destroy: event, pid, the options, nodes claimed
 *   fail=1        fail to load (create returns NULL after reporting an error)
 *   single_open=PATH  hold a POSIX record lock on PATH while a delegate of this process lives: a
 *                 create in ANOTHER process fails (as a Coral USB stick does), this process may
 *                 open several (as one process may hold several interpreters on one Edge TPU)
 *   claim=fully_connected  take every FULLY_CONNECTED float node and run it here
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int TfLiteStatus; /* kTfLiteOk = 0 */
typedef struct { int size; int data[]; } TfLiteIntArray;
typedef struct {
  int type; /* kTfLiteFloat32 = 1 */
  void *data;
  TfLiteIntArray *dims;
  float scale; int32_t zero_point;
  int allocation_type;
  size_t bytes;
  const void *allocation;
  const char *name;
  void *delegate;
  int buffer_handle;
  _Bool data_is_stale, is_variable;
  struct { int type; void *params; } quantization;
  void *sparsity;
  const TfLiteIntArray *dims_signature;
} TfLiteTensorHead; /* TfLiteTensor (64-bit): the runtime's context->tensors is an array of these */
typedef struct { TfLiteIntArray *inputs, *outputs, *intermediates, *temporaries; void *user_data, *builtin_data; } TfLiteNodeHead;
struct TfLiteDelegate;
typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *, TfLiteIntArray **);
  void *tensors;
  void *impl_;
  void *ResizeTensor, *ReportError, *AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *, int, TfLiteNodeHead **, void **);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)();  /* (ctx, registration by value, nodes, delegate) */
  int recommended_num_threads;
  void *GetExternalContext, *SetExternalContext;
  _Bool allow_fp32_relax_to_fp16;
  void *profiler, *AllocatePersistentBuffer, *AllocateBufferForEval, *RequestScratchBufferInArena,
       *GetScratchBuffer, *ResizeTensorExplicit, *PreviewDelegatePartitioning;
} TfLiteContext; /* (GetTensor, further on, is NULL in LiteRT's Python interpreter: tensors[] is used) */
typedef struct {
  void *(*init)(TfLiteContext *, const char *, size_t);
  void (*free)(TfLiteContext *, void *);
  TfLiteStatus (*prepare)(TfLiteContext *, TfLiteNodeHead *);
  TfLiteStatus (*invoke)(TfLiteContext *, TfLiteNodeHead *);
  void *profiling_string;
  int32_t builtin_code;
  const char *custom_name;
  int version;
  void *registration_external, *async_kernel;
  uint64_t inplace_operator;
  char spare[256]; /* zeros past the end: a runtime whose struct grew reads nothing but zeros */
} TfLiteRegistration;
typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(TfLiteContext *, struct TfLiteDelegate *);
  void *CopyFromBufferHandle, *CopyToBufferHandle, *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
  char spare[256];
} TfLiteDelegate;
typedef struct { TfLiteDelegate *delegate; TfLiteIntArray *nodes_to_replace, *input_tensors, *output_tensors; } TfLiteDelegateParams;

#define FULLY_CONNECTED 9
#define MAX_NODES 64

typedef struct { int in, w, b, out, act; } FcNode;
typedef struct { int n; FcNode nodes[MAX_NODES]; long *invokes; } Kernel;
typedef struct {
  char record[512];
  char claim[64];
  int lock_fd;
  int claimed;
  long invokes;
  char options[1024];
} State;

static int lock_fd = -1, lock_refs = 0; /* the single-open device, shared by this process's delegates */

static void note(State *s, const char *fmt, ...) {
  if (!s->record[0]) return;
  FILE *f = fopen(s->record, "a");
  if (!f) return;
  fprintf(f, "{\"pid\": %d, ", (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fprintf(f, ", \"options\": {%s}}\n", s->options);
  fclose(f);
}

static TfLiteTensorHead *tensor(TfLiteContext *ctx, int i) {
  return (i >= 0 && (size_t)i < ctx->tensors_size) ? &((TfLiteTensorHead *)ctx->tensors)[i] : NULL;
}

/* a float tensor whose byte count matches its dims: the layout above is the runtime's */
static int plausible(const TfLiteTensorHead *t) {
  if (!t || t->type != 1 || !t->dims) return 0;
  size_t n = 4;
  for (int i = 0; i < t->dims->size; i++) n *= (size_t)t->dims->data[i];
  return n == t->bytes;
}

static void *k_init(TfLiteContext *ctx, const char *buffer, size_t length) {
  const TfLiteDelegateParams *p = (const TfLiteDelegateParams *)buffer;
  Kernel *k = calloc(1, sizeof(Kernel));
  k->invokes = &((State *)p->delegate->data_)->invokes;
  for (int i = 0; i < p->nodes_to_replace->size && k->n < MAX_NODES; i++) {
    TfLiteNodeHead *node; void *reg;
    if (ctx->GetNodeAndRegistration(ctx, p->nodes_to_replace->data[i], &node, &reg) != 0) continue;
    FcNode *f = &k->nodes[k->n++];
    f->in = node->inputs->data[0];
    f->w = node->inputs->data[1];
    f->b = node->inputs->size > 2 ? node->inputs->data[2] : -1;
    f->out = node->outputs->data[0];
    f->act = node->builtin_data ? *(int *)node->builtin_data : 0;
  }
  return k;
}

static void k_free(TfLiteContext *ctx, void *buffer) { free(buffer); }
static TfLiteStatus k_prepare(TfLiteContext *ctx, TfLiteNodeHead *node) { return 0; }

static TfLiteStatus k_invoke(TfLiteContext *ctx, TfLiteNodeHead *node) {
  Kernel *k = (Kernel *)node->user_data;
  for (int j = 0; j < k->n; j++) {
    FcNode *f = &k->nodes[j];
    TfLiteTensorHead *in = tensor(ctx, f->in), *w = tensor(ctx, f->w), *out = tensor(ctx, f->out);
    TfLiteTensorHead *b = f->b >= 0 ? tensor(ctx, f->b) : NULL;
    int n_out = w->dims->data[0], n_in = w->dims->data[1];
    int batch = (int)(in->bytes / sizeof(float) / n_in);
    const float *x = in->data, *W = w->data, *B = (b && b->data) ? b->data : NULL;
    float *y = out->data;
    for (int r = 0; r < batch; r++)
      for (int o = 0; o < n_out; o++) {
        float acc = B ? B[o] : 0.0f;
        for (int i = 0; i < n_in; i++) acc += x[r * n_in + i] * W[o * n_in + i];
        if (f->act == 1 && acc < 0) acc = 0;                           /* RELU */
        if (f->act == 3) acc = acc < 0 ? 0 : (acc > 6 ? 6 : acc);      /* RELU6 */
        y[r * n_out + o] = acc;
      }
  }
  (*k->invokes)++;
  return 0;
}

static TfLiteStatus delegate_prepare(TfLiteContext *ctx, TfLiteDelegate *d) {
  State *s = (State *)d->data_;
  if (strcmp(s->claim, "fully_connected") != 0) {
    note(s, "\"event\": \"prepare\", \"claimed\": 0");
    return 0;
  }
  TfLiteIntArray *plan;
  if (ctx->GetExecutionPlan(ctx, &plan) != 0) return 1;
  TfLiteIntArray *take = calloc(1, sizeof(int) * (plan->size + 1));
  for (int i = 0; i < plan->size; i++) {
    TfLiteNodeHead *node; void *reg;
    if (ctx->GetNodeAndRegistration(ctx, plan->data[i], &node, &reg) != 0) continue;
    int code = ((TfLiteRegistration *)reg)->builtin_code;
    if (code != FULLY_CONNECTED || node->inputs->size < 2) continue;
    TfLiteTensorHead *in = tensor(ctx, node->inputs->data[0]), *w = tensor(ctx, node->inputs->data[1]);
    if (!plausible(in) || !plausible(w) || w->dims->size != 2) continue;
    take->data[take->size++] = plan->data[i];
  }
  s->claimed = take->size;
  note(s, "\"event\": \"prepare\", \"claimed\": %d", take->size);
  TfLiteStatus st = 0;
  if (take->size) {
    TfLiteRegistration r;
    memset(&r, 0, sizeof r);
    r.init = k_init; r.free = k_free; r.prepare = k_prepare; r.invoke = k_invoke;
    r.custom_name = "edgeagent_test_delegate"; r.version = 1;
    st = ((TfLiteStatus (*)(TfLiteContext *, TfLiteRegistration, const TfLiteIntArray *, TfLiteDelegate *))
              ctx->ReplaceNodeSubsetsWithDelegateKernels)(ctx, r, take, d);
  }
  free(take);
  return st;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report_error)(const char *)) {
  State *s = calloc(1, sizeof(State));
  s->lock_fd = -1;
  const char *single = NULL;
  int fail = 0;
  for (size_t i = 0; i < n; i++) {
    size_t used = strlen(s->options);
    snprintf(s->options + used, sizeof s->options - used, "%s\"%s\": \"%s\"", used ? ", " : "", keys[i], values[i]);
    if (!strcmp(keys[i], "record")) snprintf(s->record, sizeof s->record, "%s", values[i]);
    else if (!strcmp(keys[i], "claim")) snprintf(s->claim, sizeof s->claim, "%s", values[i]);
    else if (!strcmp(keys[i], "fail")) fail = !strcmp(values[i], "1");
    else if (!strcmp(keys[i], "single_open")) single = values[i];
  }
  if (fail) {
    note(s, "\"event\": \"create_failed\"");
    if (report_error) report_error("test delegate: told to fail (fail=1)");
    free(s);
    return NULL;
  }
  if (single) {
    if (lock_refs == 0) {
      int fd = open(single, O_RDWR | O_CREAT, 0644);
      struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
      if (fd < 0 || fcntl(fd, F_SETLK, &fl) != 0) {
        note(s, "\"event\": \"create_busy\"");
        if (report_error) report_error("test delegate: the device is held by another process");
        if (fd >= 0) close(fd);
        free(s);
        return NULL;
      }
      lock_fd = fd;
    }
    lock_refs++;
    s->lock_fd = lock_fd;
  }
  TfLiteDelegate *d = calloc(1, sizeof(TfLiteDelegate));
  d->data_ = s;
  d->Prepare = delegate_prepare;
  note(s, "\"event\": \"create\"");
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *d) {
  if (!d) return;
  State *s = (State *)d->data_;
  note(s, "\"event\": \"destroy\", \"claimed\": %d, \"invokes\": %ld", s->claimed, s->invokes);
  /* POSIX record locks belong to the process: the device is let go with the last delegate */
  if (s->lock_fd >= 0 && --lock_refs == 0) {
    close(lock_fd);
    lock_fd = -1;
  }
  free(s);
  free(d);
}
