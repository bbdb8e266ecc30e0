/* CPython binding of the kernels (module kernels._kernels).
 *
 * Arrays come in as numpy arrays, read through the NumPy C API, or as anything else that
 * exports a typed buffer (the buffer protocol). NumPy's buffer export costs ~0.13 us per
 * array, and a small kernel call takes 4-5 arrays: as much as the kernel itself for the
 * layers of a small CNN, so numpy arrays skip it. Every argument is checked here --
 * element type, C-contiguity, number of dimensions, shapes -- and a mismatch raises
 * TypeError/ValueError with the argument's name; the C kernels below never see a bad
 * pointer or size. Outputs are allocated by the Python layer (kernels/__init__.py) and
 * passed in; they are validated like inputs. The GIL is released while kernels run. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
/* Built against numpy >= 2, loadable with any numpy 2.x at run time. */
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#define NPY_TARGET_VERSION NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>

#include "bsr-gemm/bsr-gemm.h"
#include "common.h"
#include "conv/conv.h"
#include "conv/maxpool.h"
#include "conv/qadd.h"
#include "qconvert/qconvert.h"
#include "f32-gemm/f32-gemm.h"
#include "nn/nn.h"
#include "qb-gemm/qb-gemm.h"
#include "qs8-gemm/qs8-gemm.h"
#include "sparse-gemm/sparse-gemm.h"
#include "threadpool.h"

/* ------------------------------------------------------------------ buffer checking */

/* Normalizes a struct-module format ("b", "<f", "=i", "@B") to its type code, or 0 when the
 * byte order is not native. */
static char format_code(const char* fmt) {
  if (fmt == NULL) return 'B';
  if (fmt[0] == '@' || fmt[0] == '=') fmt++;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  else if (fmt[0] == '<') fmt++;
  else if (fmt[0] == '>' || fmt[0] == '!') return 0;
#else
  else if (fmt[0] == '>' || fmt[0] == '!') fmt++;
  else if (fmt[0] == '<') return 0;
#endif
  if (fmt[0] == '\0' || fmt[1] != '\0') return 0;
  char code = fmt[0];
  if (code == 'l' && sizeof(long) == 4) code = 'i';
  if (code == 'L' && sizeof(long) == 4) code = 'I';
  return code;
}

static const char* type_name(char code) {
  switch (code) {
    case 'b': return "int8";
    case 'B': return "uint8";
    case 'h': return "int16";
    case 'H': return "uint16";
    case 'i': return "int32";
    case 'I': return "uint32";
    case 'f': return "float32";
    default: return "?";
  }
}

static size_t code_size(char code) {
  switch (code) {
    case 'b': case 'B': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': case 'f': return 4;
    default: return 0;
  }
}

/* The type code of a numpy array's elements (as format_code), 0 for other dtypes or a
 * non-native byte order. */
static char numpy_code(PyArrayObject* a) {
  if (!PyArray_ISNOTSWAPPED(a)) return 0;
  switch (PyArray_TYPE(a)) {
    case NPY_INT8: return 'b';
    case NPY_UINT8: return 'B';
    case NPY_INT16: return 'h';
    case NPY_UINT16: return 'H';
    case NPY_INT32: return 'i';
    case NPY_UINT32: return 'I';
    case NPY_FLOAT32: return 'f';
    default: return 0;
  }
}

/* The struct-module format of a type code, for views filled from numpy arrays. */
static const char* code_format(char code) {
  static const char codes[] = "bBhHiIf", formats[] = "b\0B\0h\0H\0i\0I\0f";
  const char* at = code ? strchr(codes, code) : NULL;
  return at ? formats + 2 * (at - codes) : "B";
}

/* The element type code of any array argument (numpy or buffer), 0 when it has none. */
static char element_code(PyObject* obj) {
  if (PyArray_Check(obj)) return numpy_code((PyArrayObject*)obj);
  Py_buffer v;
  if (PyObject_GetBuffer(obj, &v, PyBUF_FORMAT | PyBUF_STRIDES) != 0) {
    PyErr_Clear();
    return 0;
  }
  const char code = format_code(v.format);
  PyBuffer_Release(&v);
  return code;
}

/* Gets a C-contiguous buffer whose element type is one of `codes` (e.g. "f" or "fb") with
 * ndim_lo..ndim_hi dimensions. On failure sets a Python exception and returns -1 (view is
 * then released/empty). A numpy array fills the view from its fields, with view->obj NULL
 * (nothing to release: the caller's arguments keep the array alive for the call). */
static int get_array_ex(PyObject* obj, Py_buffer* view, const char* name, const char* codes, int ndim_lo, int ndim_hi,
                        int writable) {
  memset(view, 0, sizeof *view);
  const char* want = codes[1] ? (codes[0] == 'f' && codes[1] == 'b' ? "float32 or int8" : "?") : type_name(codes[0]);
  if (obj == NULL || obj == Py_None) {
    PyErr_Format(PyExc_TypeError, "%s: expected a %s array, got None", name, want);
    return -1;
  }
  if (PyArray_Check(obj)) {
    PyArrayObject* a = (PyArrayObject*)obj;
    if (writable && !PyArray_ISWRITEABLE(a)) {
      PyErr_Format(PyExc_TypeError, "%s: expected a writable %s array, got a read-only one", name, want);
      return -1;
    }
    view->buf = PyArray_DATA(a);
    view->len = PyArray_NBYTES(a);
    view->itemsize = PyArray_ITEMSIZE(a);
    view->readonly = !PyArray_ISWRITEABLE(a);
    view->ndim = PyArray_NDIM(a);
    view->shape = (Py_ssize_t*)PyArray_DIMS(a);
    view->strides = (Py_ssize_t*)PyArray_STRIDES(a);
    const char got = numpy_code(a);
    if (got == 0 || strchr(codes, got) == NULL) {
      PyErr_Format(PyExc_TypeError, "%s: expected dtype %s, got %s", name, want, got ? type_name(got) : "another dtype");
      memset(view, 0, sizeof *view);
      return -1;
    }
    view->format = (char*)code_format(got);
    if (view->ndim < ndim_lo || view->ndim > ndim_hi) {
      if (ndim_lo == ndim_hi)
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimension(s), got %d", name, ndim_lo, view->ndim);
      else
        PyErr_Format(PyExc_ValueError, "%s: expected %d to %d dimensions, got %d", name, ndim_lo, ndim_hi, view->ndim);
      memset(view, 0, sizeof *view);
      return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
      PyErr_Format(PyExc_ValueError, "%s: array must be C-contiguous (use numpy.ascontiguousarray)", name);
      memset(view, 0, sizeof *view);
      return -1;
    }
    return 0;
  }
  int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj, view, flags) != 0) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "%s: expected a %s%s array, got %.100s", name, writable ? "writable " : "", want,
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  const char got = format_code(view->format);
  if (got == 0 || strchr(codes, got) == NULL || (size_t)view->itemsize != code_size(got)) {
    PyErr_Format(PyExc_TypeError, "%s: expected dtype %s, got format '%s'", name, want, view->format ? view->format : "B");
    goto fail;
  }
  if (view->ndim < ndim_lo || view->ndim > ndim_hi) {
    if (ndim_lo == ndim_hi)
      PyErr_Format(PyExc_ValueError, "%s: expected %d dimension(s), got %d", name, ndim_lo, view->ndim);
    else
      PyErr_Format(PyExc_ValueError, "%s: expected %d to %d dimensions, got %d", name, ndim_lo, ndim_hi, view->ndim);
    goto fail;
  }
  if (!PyBuffer_IsContiguous(view, 'C')) {
    PyErr_Format(PyExc_ValueError, "%s: array must be C-contiguous (use numpy.ascontiguousarray)", name);
    goto fail;
  }
  return 0;
fail:
  PyBuffer_Release(view);
  memset(view, 0, sizeof *view);
  return -1;
}

static int get_array(PyObject* obj, Py_buffer* view, const char* name, char code, int ndim, int writable) {
  const char codes[2] = {code, 0};
  return get_array_ex(obj, view, name, codes, ndim, ndim, writable);
}

static Py_ssize_t dim(const Py_buffer* v, int i) { return v->shape ? v->shape[i] : v->len / v->itemsize; }

static int expect_dim(const Py_buffer* v, int i, Py_ssize_t want, const char* name, const char* what) {
  if (dim(v, i) != want) {
    PyErr_Format(PyExc_ValueError, "%s: dimension %d must be %s = %zd, got %zd", name, i, what, want, dim(v, i));
    return -1;
  }
  return 0;
}

/* Up to 8 views released together at the end of a call. */
typedef struct {
  Py_buffer v[8];
  int n;
} views;

static Py_buffer* views_add(views* vs) { return &vs->v[vs->n++]; }
static void views_release(views* vs) {
  for (int i = 0; i < vs->n; i++)
    if (vs->v[i].obj) PyBuffer_Release(&vs->v[i]);
  vs->n = 0;
}

/* x [M, K] (dtype `code`) and out [M, N] float32 of a packed linear layer with K and N given;
 * *m = M. The views come from `vs`, released by the caller. */
static int linear_x_out(views* vs, PyObject* x_obj, char code, PyObject* out_obj, size_t k, size_t n, Py_buffer** x,
                        Py_buffer** out, Py_ssize_t* m) {
  *x = views_add(vs);
  *out = views_add(vs);
  if (get_array(x_obj, *x, "x", code, 2, 0) || expect_dim(*x, 1, (Py_ssize_t)k, "x", "K of the packed weights")) return -1;
  *m = dim(*x, 0);
  if (get_array(out_obj, *out, "out", 'f', 2, 1) || expect_dim(*out, 0, *m, "out", "M") ||
      expect_dim(*out, 1, (Py_ssize_t)n, "out", "N"))
    return -1;
  return 0;
}

/* 1 when obj exports an int8 buffer; the kernels that take float32 or int8 pick by it (anything
 * else is reported by get_array with the expected dtype). */
static int is_int8_buffer(PyObject* obj) { return element_code(obj) == 'b'; }

/* ------------------------------------------------------------------ packed weights */

typedef enum {
  PACKED_QS8 = 1, PACKED_QB, PACKED_SPARSE, PACKED_F32, PACKED_SPW, PACKED_SPB, PACKED_BSR, PACKED_SPP, PACKED_F32_BSR
} packed_kind;

typedef struct {
  PyObject_HEAD packed_kind kind;
  union {
    ef_qs8_packed qs8;
    ef_qb_packed qb;
    ef_sparse_packed sp;
    ef_f32_packed f32;
    ef_spw_packed spw;
    ef_bsr_packed bsr;
    ef_spb_packed spb;
    ef_spp_packed spp;
    ef_f32_bsr_packed f32_bsr;
  } u;
} PackedObject;

static void packed_dealloc(PackedObject* self) {
  if (self->kind == PACKED_QS8) ef_qs8_packed_free(&self->u.qs8);
  if (self->kind == PACKED_QB) ef_qb_packed_free(&self->u.qb);
  if (self->kind == PACKED_SPARSE) ef_sparse_packed_free(&self->u.sp);
  if (self->kind == PACKED_F32) ef_f32_packed_free(&self->u.f32);
  if (self->kind == PACKED_SPW) ef_spw_packed_free(&self->u.spw);
  if (self->kind == PACKED_BSR) ef_bsr_packed_free(&self->u.bsr);
  if (self->kind == PACKED_SPB) ef_spb_packed_free(&self->u.spb);
  if (self->kind == PACKED_SPP) ef_spp_packed_free(&self->u.spp);
  if (self->kind == PACKED_F32_BSR) ef_f32_bsr_packed_free(&self->u.f32_bsr);
  Py_TYPE(self)->tp_free((PyObject*)self);
}

static PyObject* packed_get_n(PackedObject* self, void* unused) {
  switch (self->kind) {
    case PACKED_QS8: return PyLong_FromSize_t(self->u.qs8.n);
    case PACKED_QB: return PyLong_FromSize_t(self->u.qb.n);
    case PACKED_SPARSE: return PyLong_FromSize_t(self->u.sp.n);
    case PACKED_F32: return PyLong_FromSize_t(self->u.f32.n);
    case PACKED_SPW: return PyLong_FromSize_t(self->u.spw.n);
    case PACKED_BSR: return PyLong_FromSize_t(self->u.bsr.n);
    case PACKED_SPB: return PyLong_FromSize_t(self->u.spb.n);
    case PACKED_SPP: return PyLong_FromSize_t(self->u.spp.n);
    case PACKED_F32_BSR: return PyLong_FromSize_t(self->u.f32_bsr.n);
  }
  Py_RETURN_NONE;
}
static PyObject* packed_get_k(PackedObject* self, void* unused) {
  switch (self->kind) {
    case PACKED_QS8: return PyLong_FromSize_t(self->u.qs8.k);
    case PACKED_QB: return PyLong_FromSize_t(self->u.qb.k);
    case PACKED_SPARSE: return PyLong_FromSize_t(self->u.sp.k);
    case PACKED_F32: return PyLong_FromSize_t(self->u.f32.k);
    case PACKED_SPW: return PyLong_FromSize_t(self->u.spw.k);
    case PACKED_BSR: return PyLong_FromSize_t(self->u.bsr.k);
    case PACKED_SPB: return PyLong_FromSize_t(self->u.spb.k);
    case PACKED_SPP: return PyLong_FromSize_t(self->u.spp.k);
    case PACKED_F32_BSR: return PyLong_FromSize_t(self->u.f32_bsr.k);
  }
  Py_RETURN_NONE;
}
static PyObject* packed_get_nbytes(PackedObject* self, void* unused) {
  switch (self->kind) {
    case PACKED_QS8: { /* + the x4 panel copy made on AVX-512 / AMX CPUs (1 byte per weight) */
      const ef_qs8_packed* q = &self->u.qs8;
      return PyLong_FromSize_t(q->n_blocks * q->block_bytes + (q->panel ? q->n_blocks * q->kp64 * EF_QS8_NR : 0));
    }
    case PACKED_QB: return PyLong_FromSize_t(self->u.qb.data_bytes + self->u.qb.n * sizeof(float));
    case PACKED_F32: return PyLong_FromSize_t(self->u.f32.n_blocks * self->u.f32.block_floats * sizeof(float));
    case PACKED_SPW: {
      const ef_spw_packed* sp = &self->u.spw;
      return PyLong_FromSize_t(sp->steps * (EF_SPW_STEP_BYTES + sizeof(uint16_t)) + (sp->groups + 1) * 4 + sp->n * 12);
    }
    case PACKED_SPB: return PyLong_FromSize_t(ef_spb_packed_bytes(&self->u.spb));
    case PACKED_SPP: return PyLong_FromSize_t(ef_spp_packed_bytes(&self->u.spp));
    case PACKED_F32_BSR: {
      const ef_f32_bsr_packed* b = &self->u.f32_bsr;
      return PyLong_FromSize_t(b->nnz_blocks * (EF_F32_BSR_BLOCK_FLOATS * sizeof(float) + 4) + (b->n_groups + 1) * 4 +
                               b->n_groups * EF_F32_NR * sizeof(float));
    }
    case PACKED_BSR: {
      const ef_bsr_packed* b = &self->u.bsr;
      return PyLong_FromSize_t(b->nnz_blocks * (EF_BSR_BLOCK_BYTES + 4) + (b->n_groups + 1) * 4 +
                               b->n_groups * EF_QS8_BLOCK_HEADER_BYTES);
    }
    case PACKED_SPARSE: {
      const ef_sparse_packed* sp = &self->u.sp;
      const size_t per_nz = sizeof(uint16_t) + (sp->dtype == EF_SPARSE_F32 ? 4 : 1);
      return PyLong_FromSize_t(sp->nnz * per_nz + (sp->n + 1) * 4 + sp->n * (sp->dtype == EF_SPARSE_F32 ? 4 : 12));
    }
  }
  Py_RETURN_NONE;
}
static PyObject* packed_get_kind(PackedObject* self, void* unused) {
  switch (self->kind) {
    case PACKED_QS8: return PyUnicode_FromString("qs8");
    case PACKED_QB: return PyUnicode_FromFormat("q%d_g%d", self->u.qb.bits, self->u.qb.group);
    case PACKED_SPARSE: return PyUnicode_FromString(self->u.sp.dtype == EF_SPARSE_F32 ? "sparse_f32" : "sparse_qs8");
    case PACKED_F32: return PyUnicode_FromString("f32");
    case PACKED_SPW: return PyUnicode_FromString("sparse_qs8_windows");
    case PACKED_BSR: return PyUnicode_FromString("bsr_qs8");
    case PACKED_SPB: return PyUnicode_FromString("sparse_qs8_bitmask");
    case PACKED_SPP: return PyUnicode_FromString("sparse_qs8_permute");
    case PACKED_F32_BSR: return PyUnicode_FromString("sparse_f32_blocks");
  }
  Py_RETURN_NONE;
}

static PyObject* packed_get_nnz(PackedObject* self, void* unused) {
  if (self->kind == PACKED_SPARSE) return PyLong_FromSize_t(self->u.sp.nnz);
  if (self->kind == PACKED_SPW) return PyLong_FromSize_t(self->u.spw.nnz);
  if (self->kind == PACKED_BSR) return PyLong_FromSize_t(self->u.bsr.nnz_blocks * EF_BSR_BLOCK_BYTES);
  if (self->kind == PACKED_SPB) return PyLong_FromSize_t(self->u.spb.nnz);
  if (self->kind == PACKED_SPP) return PyLong_FromSize_t(self->u.spp.nnz);
  if (self->kind == PACKED_F32_BSR) return PyLong_FromSize_t(self->u.f32_bsr.nnz_blocks * EF_F32_BSR_BLOCK_FLOATS);
  Py_RETURN_NONE;
}

static PyGetSetDef packed_getset[] = {
    {"nnz", (getter)packed_get_nnz, NULL, "stored nonzeros (sparse formats; block formats: stored blocks x 64; None otherwise)", NULL},
    {"n", (getter)packed_get_n, NULL, "output channels (rows of the weight matrix)", NULL},
    {"k", (getter)packed_get_k, NULL, "input channels (columns of the weight matrix)", NULL},
    {"nbytes", (getter)packed_get_nbytes, NULL, "bytes of packed storage", NULL},
    {"kind", (getter)packed_get_kind, NULL, "weight format", NULL},
    {NULL}};

static PyTypeObject PackedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "kernels._kernels.Packed",
    .tp_basicsize = sizeof(PackedObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Weights packed once into a kernel's layout (create with the pack_* functions).",
    .tp_dealloc = (destructor)packed_dealloc,
    .tp_getset = packed_getset,
};

static PackedObject* packed_arg(PyObject* obj, packed_kind kind, const char* name) {
  if (!PyObject_TypeCheck(obj, &PackedType) || ((PackedObject*)obj)->kind != kind) {
    PyErr_Format(PyExc_TypeError, "%s: expected packed weights of the right kind, got %.100s", name,
                 Py_TYPE(obj)->tp_name);
    return NULL;
  }
  return (PackedObject*)obj;
}

/* ------------------------------------------------------------------ int8 GEMM call arguments */

/* What the int8 GEMM entries (qs8_gemm and the int8 sparse gemms) take per call: activations
 * int8 [M, K] or [K] (one row), a per-row scale and zero point (float32 / int32 arrays [M], or a
 * Python number for every row), and out [M, N] (or [N] with one-dimensional activations), or
 * None for a new float32 array. The call returns out. A Python number skips the buffer
 * protocol, ~100 ns per argument, and out=None saves the caller an np.empty: a sizeable part
 * of a small GEMV (a 384 x 384 int8 GEMV is ~1.5 us). */
typedef struct {
  views vs;
  Py_ssize_t m;
  const void* x;
  void* out;
  int out_int8; /* out's dtype is int8 (only where allowed) */
  const float* scale;
  const int32_t* zp;
  float scale1; /* the Python-number arguments when m == 1 */
  int32_t zp1;
  void* heap; /* the Python-number arguments broadcast over m > 1 rows */
  PyObject* out_ref; /* a reference to out (the caller's, or a new array), for the call to return */
} q8_args;

static int is_number(PyObject* o) { return (PyFloat_Check(o) || PyLong_Check(o)) && !PyBool_Check(o); }

/* Fills c (release with q8_args_release, also after a failure). out_codes: "f" or "fb". */
static int q8_args_get(q8_args* c, PyObject* x_obj, PyObject* scale_obj, PyObject* zp_obj, PyObject* out_obj, size_t k,
                       size_t n, const char* xn, const char* sn, const char* zn, const char* out_codes) {
  memset(c, 0, sizeof *c);
  Py_buffer *x = views_add(&c->vs), *out = views_add(&c->vs);
  if (get_array_ex(x_obj, x, xn, "b", 1, 2, 0)) return -1;
  const int one_d = x->ndim == 1;
  if (expect_dim(x, one_d ? 0 : 1, (Py_ssize_t)k, xn, "K of the packed weights")) return -1;
  const Py_ssize_t m = c->m = one_d ? 1 : dim(x, 0);
  c->x = x->buf;
  const int sn_num = is_number(scale_obj), zp_num = PyLong_Check(zp_obj) && !PyBool_Check(zp_obj);
  if ((sn_num || zp_num) && m > 1 && (c->heap = PyMem_Malloc((size_t)m * 8)) == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  if (sn_num) {
    const double d = PyFloat_AsDouble(scale_obj);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    c->scale1 = (float)d;
    if (m > 1) {
      float* s = c->heap;
      for (Py_ssize_t i = 0; i < m; i++) s[i] = c->scale1;
    }
    c->scale = m > 1 ? (const float*)c->heap : &c->scale1;
  } else {
    Py_buffer* scale = views_add(&c->vs);
    if (get_array(scale_obj, scale, sn, 'f', 1, 0) || expect_dim(scale, 0, m, sn, "M")) return -1;
    c->scale = scale->buf;
  }
  if (zp_num) {
    int overflow = 0;
    const long v = PyLong_AsLongAndOverflow(zp_obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < -128 || v > 127) {
      PyErr_Format(PyExc_ValueError, "%s = %S is outside the int8 range [-128, 127]", zn, zp_obj);
      return -1;
    }
    c->zp1 = (int32_t)v;
    if (m > 1) {
      int32_t* z = (int32_t*)c->heap + m;
      for (Py_ssize_t i = 0; i < m; i++) z[i] = c->zp1;
    }
    c->zp = m > 1 ? (const int32_t*)c->heap + m : &c->zp1;
  } else {
    Py_buffer* zp = views_add(&c->vs);
    if (get_array(zp_obj, zp, zn, 'i', 1, 0) || expect_dim(zp, 0, m, zn, "M")) return -1;
    const int32_t* z = c->zp = zp->buf;
    for (Py_ssize_t i = 0; i < m; i++)
      if (z[i] < -128 || z[i] > 127) {
        PyErr_Format(PyExc_ValueError, "%s[%zd] = %d is outside the int8 range [-128, 127]", zn, i, z[i]);
        return -1;
      }
  }
  /* out has as many dimensions as x; None: a new float32 array */
  if (out_obj == Py_None) {
    npy_intp dims[2] = {(npy_intp)m, (npy_intp)n};
    out_obj = one_d ? PyArray_SimpleNew(1, dims + 1, NPY_FLOAT32) : PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (out_obj == NULL) return -1;
  } else {
    Py_INCREF(out_obj);
  }
  c->out_ref = out_obj;
  if (get_array_ex(out_obj, out, "out", out_codes, x->ndim, x->ndim, 1)) return -1;
  if (!one_d && expect_dim(out, 0, m, "out", "M")) return -1;
  if (expect_dim(out, one_d ? 0 : 1, (Py_ssize_t)n, "out", "N")) return -1;
  c->out = out->buf;
  c->out_int8 = format_code(out->format) == 'b';
  return 0;
}

static void q8_args_release(q8_args* c) {
  views_release(&c->vs);
  PyMem_Free(c->heap);
  c->heap = NULL;
  Py_CLEAR(c->out_ref);
}

/* out, for the call to return (the reference moves out of c), after releasing the rest. */
static PyObject* q8_args_finish(q8_args* c) {
  PyObject* out = c->out_ref;
  c->out_ref = NULL;
  q8_args_release(c);
  return out;
}

/* Fast-call argument helpers: the GEMM entries take their arguments as a C array (no tuple,
 * no format string parsing), which matters at the ~1 us scale of a small GEMV. */
static int nargs_ok(const char* fn, Py_ssize_t nargs, Py_ssize_t want) {
  if (nargs == want) return 1;
  PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", fn, want, nargs);
  return 0;
}
static int float_arg(PyObject* o, float* v) {
  const double d = PyFloat_AsDouble(o);
  if (d == -1.0 && PyErr_Occurred()) return -1;
  *v = (float)d;
  return 0;
}
static int int_arg(PyObject* o, int* v) {
  const long l = PyLong_AsLong(o);
  if (l == -1 && PyErr_Occurred()) return -1;
  if (l < INT_MIN || l > INT_MAX) {
    PyErr_SetString(PyExc_OverflowError, "integer argument out of range");
    return -1;
  }
  *v = (int)l;
  return 0;
}

/* Work below this many multiply-adds runs with the GIL held: releasing and taking it back
 * costs more than a GEMV this small takes. */
#define SMALL_GEMM_MACS ((size_t)1 << 15)

/* ------------------------------------------------------------------ qs8 */

/* The arguments of the int8 weight packers (qs8, bsr): w int8 [N, K] with 0 < K <= max_k,
 * per-channel w_scale float32 [N], optional w_zero_point int32 [N] inside the int8 range and
 * optional float32 bias [N]. The views are left in the caller's set to release; -1 with
 * the Python error set when an argument is wrong. */
static int get_int8_weights(PyObject* w_obj, PyObject* scale_obj, PyObject* zp_obj, PyObject* bias_obj, int max_k,
                            Py_buffer* w, Py_buffer* scale, Py_buffer* zp, Py_buffer* bias, Py_ssize_t* n_out,
                            Py_ssize_t* k_out) {
  if (get_array(w_obj, w, "w", 'b', 2, 0)) return -1;
  const Py_ssize_t n = dim(w, 0), k = dim(w, 1);
  if (n == 0 || k == 0) {
    PyErr_SetString(PyExc_ValueError, "w: shape must be non-empty");
    return -1;
  }
  if (k > max_k) {
    PyErr_Format(PyExc_ValueError, "w: K = %zd exceeds %d, the largest K whose int32 accumulation is exact", k, max_k);
    return -1;
  }
  if (get_array(scale_obj, scale, "w_scale", 'f', 1, 0) || expect_dim(scale, 0, n, "w_scale", "N")) return -1;
  if (zp_obj != Py_None && (get_array(zp_obj, zp, "w_zero_point", 'i', 1, 0) || expect_dim(zp, 0, n, "w_zero_point", "N")))
    return -1;
  if (bias_obj != Py_None && (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, n, "bias", "N")))
    return -1;
  if (zp->buf) {
    const int32_t* z = zp->buf;
    for (Py_ssize_t i = 0; i < n; i++)
      if (z[i] < -128 || z[i] > 127) {
        PyErr_Format(PyExc_ValueError, "w_zero_point[%zd] = %d is outside the int8 range [-128, 127]", i, z[i]);
        return -1;
      }
  }
  *n_out = n;
  *k_out = k;
  return 0;
}

/* The dense (qs8) and block-sparse (bsr) packers, one entry per layout:
 * <layout>_pack(w int8 [N,K], w_scale [N], w_zero_point [N]|None, bias [N]|None) -> Packed
 * The same checks for both (get_int8_weights), then the layout's packer; on failure the
 * packers have freed what they allocated, so dealloc frees nothing. */
static PyObject* int8_pack(PyObject* args, packed_kind kind, int max_k) {
  PyObject *w_obj, *scale_obj, *zp_obj, *bias_obj;
  if (!PyArg_ParseTuple(args, "OOOO", &w_obj, &scale_obj, &zp_obj, &bias_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *w = views_add(&vs), *scale = views_add(&vs), *zp = views_add(&vs), *bias = views_add(&vs);
  Py_ssize_t n, k;
  if (get_int8_weights(w_obj, scale_obj, zp_obj, bias_obj, max_k, w, scale, zp, bias, &n, &k)) goto fail;
  PackedObject* p = PyObject_New(PackedObject, &PackedType);
  if (p == NULL) goto fail;
  p->kind = kind;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  if (kind == PACKED_QS8)
    rc = ef_qs8_pack(w->buf, (size_t)n, (size_t)k, scale->buf, zp->buf, bias->buf, &p->u.qs8);
  else
    rc = ef_bsr_pack(w->buf, (size_t)n, (size_t)k, scale->buf, zp->buf, bias->buf, &p->u.bsr);
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    memset(&p->u, 0, sizeof p->u);
    Py_DECREF(p);
    PyErr_NoMemory();
    goto fail;
  }
  views_release(&vs);
  return (PyObject*)p;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_qs8_pack(PyObject* self, PyObject* args) { return int8_pack(args, PACKED_QS8, EF_QS8_MAX_K); }

/* Runs stmt with the GIL released unless the job is tiny (see SMALL_GEMM_MACS). */
#define RUN_RELEASING_GIL(macs, stmt)  \
  do {                                 \
    if ((macs) < SMALL_GEMM_MACS) {    \
      stmt;                            \
    } else {                           \
      Py_BEGIN_ALLOW_THREADS stmt;     \
      Py_END_ALLOW_THREADS             \
    }                                  \
  } while (0)

/* qs8_gemm and bsr_gemm(a, a_scale, a_zero_point, packed, out, out_min, out_max, out_scale,
 * out_zero_point): the same arguments and arithmetic on dense or 16 x 4 block-sparse weights. */
static PyObject* q8_gemm_call(const char* name, packed_kind kind, PyObject* const* args, Py_ssize_t nargs) {
  if (!nargs_ok(name, nargs, 9)) return NULL;
  float out_min, out_max, out_scale;
  int out_zp;
  if (float_arg(args[5], &out_min) || float_arg(args[6], &out_max) || float_arg(args[7], &out_scale) ||
      int_arg(args[8], &out_zp))
    return NULL;
  PackedObject* p = packed_arg(args[3], kind, "packed");
  if (p == NULL) return NULL;
  const size_t k = kind == PACKED_QS8 ? p->u.qs8.k : p->u.bsr.k, n = kind == PACKED_QS8 ? p->u.qs8.n : p->u.bsr.n;
  q8_args c;
  if (q8_args_get(&c, args[0], args[1], args[2], args[4], k, n, "a", "a_scale", "a_zero_point", "fb")) goto fail;
  /* the output's dtype selects dequantized fp32 or requantized int8 */
  const int out_int8 = c.out_int8;
  if (out_int8 && (!(out_scale > 0.0f) || !isfinite(out_scale) || out_zp < -128 || out_zp > 127)) {
    PyErr_SetString(PyExc_ValueError, "int8 output needs out_scale > 0 (finite) and out_zero_point in [-128, 127]");
    goto fail;
  }
  ef_qs8_gemm_params params = {.k = k, .out_min = out_min, .out_max = out_max, .out_int8 = out_int8,
                               .out_inv_scale = out_int8 ? 1.0f / out_scale : 1.0f, .out_zp = out_int8 ? out_zp : 0};
  int rc;
  if (kind == PACKED_QS8) {
    RUN_RELEASING_GIL((size_t)c.m * n * k, rc = ef_qs8_gemm(NULL, (size_t)c.m, c.x, c.zp, c.scale, &p->u.qs8, c.out, &params));
  } else {
    RUN_RELEASING_GIL((size_t)c.m * (p->u.bsr.nnz_blocks + n) * EF_BSR_BLOCK_BYTES,
                      rc = ef_bsr_gemm(NULL, (size_t)c.m, c.x, c.zp, c.scale, &p->u.bsr, c.out, &params));
  }
  if (rc != 0) {
    q8_args_release(&c);
    return PyErr_NoMemory();
  }
  return q8_args_finish(&c);
fail:
  q8_args_release(&c);
  return NULL;
}

static PyObject* py_qs8_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return q8_gemm_call("qs8_gemm", PACKED_QS8, args, nargs);
}

/* ------------------------------------------------------------------ bsr (16 x 4 block-sparse int8) */

static PyObject* py_bsr_pack(PyObject* self, PyObject* args) { return int8_pack(args, PACKED_BSR, EF_BSR_MAX_K); }

static PyObject* py_bsr_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return q8_gemm_call("bsr_gemm", PACKED_BSR, args, nargs);
}

/* ------------------------------------------------------------------ maxpool (int8 / fp32, NHWC) */

/* maxpool_qs8 / maxpool_f32(x [N,H,W,C], out [N,OH,OW,C], kh, kw, stride_h, stride_w, dil_h,
 * dil_w): max over each window, no padding (maxpool.h); x and out int8 ('b') or float32 ('f'). */
static PyObject* maxpool(const char* fn, char code, PyObject* const* args, Py_ssize_t nargs) {
  if (!nargs_ok(fn, nargs, 8)) return NULL;
  int geo[6]; /* kh, kw, sh, sw, dh, dw */
  for (int i = 0; i < 6; i++) {
    if (int_arg(args[2 + i], &geo[i])) return NULL;
    if (geo[i] < 1) return PyErr_Format(PyExc_ValueError, "%s: kernel, stride and dilation must be >= 1", fn);
  }
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *out = views_add(&vs);
  if (get_array(args[0], x, "x", code, 4, 0) || get_array(args[1], out, "out", code, 4, 1)) goto fail;
  const Py_ssize_t nb = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
  const Py_ssize_t span_h = (Py_ssize_t)geo[4] * (geo[0] - 1) + 1, span_w = (Py_ssize_t)geo[5] * (geo[1] - 1) + 1;
  if (span_h > h || span_w > w || c == 0) {
    PyErr_Format(PyExc_ValueError, "%s: a %zdx%zd window (with dilation) does not fit x of shape (%zd, %zd, %zd, %zd)",
                 fn, span_h, span_w, nb, h, w, c);
    goto fail;
  }
  const Py_ssize_t oh = (h - span_h) / geo[2] + 1, ow = (w - span_w) / geo[3] + 1;
  if (expect_dim(out, 0, nb, "out", "N") || expect_dim(out, 1, oh, "out", "output height") ||
      expect_dim(out, 2, ow, "out", "output width") || expect_dim(out, 3, c, "out", "C"))
    goto fail;
  const ef_maxpool_params p = {(size_t)h, (size_t)w, (size_t)c, (size_t)oh, (size_t)ow, (size_t)geo[0], (size_t)geo[1],
                               (size_t)geo[2], (size_t)geo[3], (size_t)geo[4], (size_t)geo[5]};
  const size_t in_image = (size_t)(h * w * c), out_image = (size_t)(oh * ow * c);
  if (code == 'f') {
    RUN_RELEASING_GIL(out_image * (size_t)nb * (size_t)(geo[0] * geo[1]),
                      for (Py_ssize_t i = 0; i < nb; i++)
                          ef_maxpool_f32((const float*)x->buf + i * in_image, (float*)out->buf + i * out_image, &p));
  } else {
    RUN_RELEASING_GIL(out_image * (size_t)nb * (size_t)(geo[0] * geo[1]),
                      for (Py_ssize_t i = 0; i < nb; i++)
                          ef_maxpool_qs8((const int8_t*)x->buf + i * in_image, (int8_t*)out->buf + i * out_image, &p));
  }
  views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_maxpool_qs8(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return maxpool("maxpool_qs8", 'b', args, nargs);
}

static PyObject* py_maxpool_f32(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return maxpool("maxpool_f32", 'f', args, nargs);
}

/* ------------------------------------------------------------------ qconvert (float32 <-> int8) */

/* quantize(x float32 [n], out int8 [n], scale, zero_point) and dequantize(q int8 [n],
 * out float32 [n], scale, zero_point): the engine's QuantizeLinear / DequantizeLinear. */
static PyObject* qconvert(PyObject* const* args, Py_ssize_t nargs, int to_int8) {
  const char* fn = to_int8 ? "quantize" : "dequantize";
  if (!nargs_ok(fn, nargs, 4)) return NULL;
  float scale;
  int zp;
  if (float_arg(args[2], &scale) || int_arg(args[3], &zp)) return NULL;
  if (!(scale > 0.0f) || !isfinite(scale) || zp < -128 || zp > 127)
    return PyErr_Format(PyExc_ValueError, "%s needs scale > 0 (finite) and zero_point in [-128, 127]", fn);
  views vs = {.n = 0};
  Py_buffer *src = views_add(&vs), *out = views_add(&vs);
  if (get_array(args[0], src, to_int8 ? "x" : "q", to_int8 ? 'f' : 'b', 1, 0) ||
      get_array(args[1], out, "out", to_int8 ? 'b' : 'f', 1, 1))
    goto fail;
  if (dim(out, 0) != dim(src, 0)) {
    PyErr_Format(PyExc_ValueError, "%s: out has %zd elements, the input %zd", fn, dim(out, 0), dim(src, 0));
    goto fail;
  }
  const size_t n = (size_t)dim(src, 0);
  RUN_RELEASING_GIL(n, to_int8 ? ef_quantize_qs8(n, src->buf, 1.0f / scale, zp, out->buf)
                               : ef_dequantize_qs8(n, src->buf, scale, zp, out->buf));
  views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_quantize(PyObject* self, PyObject* const* args, Py_ssize_t nargs) { return qconvert(args, nargs, 1); }
static PyObject* py_dequantize(PyObject* self, PyObject* const* args, Py_ssize_t nargs) { return qconvert(args, nargs, 0); }

/* ------------------------------------------------------------------ qadd (int8 residual add) */

static PyObject* py_qadd(PyObject* self, PyObject* args) {
  PyObject *a_obj, *b_obj, *out_obj;
  ef_qadd_params p;
  float out_scale;
  int a_zp, b_zp, out_zp;
  if (!PyArg_ParseTuple(args, "OOOfififi", &a_obj, &b_obj, &out_obj, &p.a_scale, &a_zp, &p.b_scale, &b_zp, &out_scale,
                        &out_zp))
    return NULL;
  if (!(out_scale > 0.0f) || !isfinite(out_scale) || a_zp < -128 || a_zp > 127 || b_zp < -128 || b_zp > 127 ||
      out_zp < -128 || out_zp > 127)
    return PyErr_Format(PyExc_ValueError, "qadd needs out_scale > 0 (finite) and zero points in [-128, 127]");
  p.a_zp = a_zp;
  p.b_zp = b_zp;
  p.out_zp = out_zp;
  p.out_inv_scale = 1.0f / out_scale;
  views vs = {.n = 0};
  Py_buffer *a = views_add(&vs), *b = views_add(&vs), *out = views_add(&vs);
  if (get_array(a_obj, a, "a", 'b', 1, 0) || get_array(b_obj, b, "b", 'b', 1, 0) || get_array(out_obj, out, "out", 'b', 1, 1))
    goto fail;
  if (dim(b, 0) != dim(a, 0) || dim(out, 0) != dim(a, 0)) {
    PyErr_SetString(PyExc_ValueError, "a, b and out must have the same length");
    goto fail;
  }
  Py_BEGIN_ALLOW_THREADS ef_qadd_qs8((size_t)dim(a, 0), a->buf, b->buf, out->buf, &p);
  Py_END_ALLOW_THREADS views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* ------------------------------------------------------------------ qb (4/2-bit groups) */

static PyObject* py_qb_pack(PyObject* self, PyObject* args) {
  PyObject *q_obj, *d_obj, *m_obj, *bias_obj;
  int bits, group;
  if (!PyArg_ParseTuple(args, "OiiOOO", &q_obj, &bits, &group, &d_obj, &m_obj, &bias_obj)) return NULL;
  if (bits != 4 && bits != 2) return PyErr_Format(PyExc_ValueError, "bits must be 4 or 2, got %d", bits);
  if (group != 32 && group != 64 && group != 128)
    return PyErr_Format(PyExc_ValueError, "group_size must be 32, 64 or 128, got %d", group);
  views vs = {.n = 0};
  Py_buffer *q = views_add(&vs), *d = views_add(&vs), *m = views_add(&vs), *bias = views_add(&vs);
  if (get_array(q_obj, q, "q", 'B', 2, 0)) goto fail;
  const Py_ssize_t n = dim(q, 0), k = dim(q, 1);
  if (n == 0 || k == 0) { PyErr_SetString(PyExc_ValueError, "q: shape must be non-empty"); goto fail; }
  const Py_ssize_t groups = (k + group - 1) / group;
  if (get_array(d_obj, d, "scales", 'f', 2, 0) || expect_dim(d, 0, n, "scales", "N") || expect_dim(d, 1, groups, "scales", "ceil(K / group_size)")) goto fail;
  if (get_array(m_obj, m, "offsets", 'f', 2, 0) || expect_dim(m, 0, n, "offsets", "N") || expect_dim(m, 1, groups, "offsets", "ceil(K / group_size)")) goto fail;
  if (bias_obj != Py_None && (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, n, "bias", "N"))) goto fail;
  const float *dv = d->buf, *mv = m->buf;
  for (Py_ssize_t i = 0; i < n * groups; i++)
    if (!(fabsf(dv[i]) <= 65504.0f) || !(fabsf(mv[i]) <= 65504.0f)) {
      PyErr_Format(PyExc_ValueError, "scales/offsets[%zd]: %g / %g is not finite in fp16 (|v| <= 65504)", i, (double)dv[i], (double)mv[i]);
      goto fail;
    }
  const uint8_t* qv = q->buf;
  for (Py_ssize_t i = 0; i < n * k; i++)
    if (qv[i] >> bits) {
      PyErr_Format(PyExc_ValueError, "q[%zd, %zd] = %d does not fit in %d bits", i / k, i % k, qv[i], bits);
      goto fail;
    }
  PackedObject* p = PyObject_New(PackedObject, &PackedType);
  if (p == NULL) goto fail;
  p->kind = PACKED_QB;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_qb_pack(q->buf, (size_t)n, (size_t)k, bits, group, d->buf, m->buf, bias->buf, &p->u.qb);
  Py_END_ALLOW_THREADS if (rc != 0) {
    Py_DECREF(p);
    PyErr_NoMemory();
    goto fail;
  }
  views_release(&vs);
  return (PyObject*)p;
fail:
  views_release(&vs);
  return NULL;
}

/* qb_gemm(x, packed, out, out_min=-inf, out_max=inf): the clamp is the fused activation. */
static PyObject* py_qb_gemm(PyObject* self, PyObject* args) {
  PyObject *x_obj, *packed_obj, *out_obj;
  float lo = -INFINITY, hi = INFINITY;
  if (!PyArg_ParseTuple(args, "OOO|ff", &x_obj, &packed_obj, &out_obj, &lo, &hi)) return NULL;
  if (!(lo <= hi)) return PyErr_Format(PyExc_ValueError, "qb_gemm: out_min must be <= out_max (got %g, %g)", lo, hi);
  PackedObject* p = packed_arg(packed_obj, PACKED_QB, "packed");
  if (p == NULL) return NULL;
  const ef_qb_packed* w = &p->u.qb;
  views vs = {.n = 0};
  Py_buffer *x, *out;
  Py_ssize_t m;
  if (linear_x_out(&vs, x_obj, 'f', out_obj, w->k, w->n, &x, &out, &m)) goto fail;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_qb_gemm(NULL, (size_t)m, x->buf, w, out->buf, lo, hi);
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* ------------------------------------------------------------------ sparse */

static PyObject* py_sparse_pack(PyObject* self, PyObject* args) {
  PyObject *w_obj, *scale_obj, *bias_obj;
  if (!PyArg_ParseTuple(args, "OOO", &w_obj, &scale_obj, &bias_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *w = views_add(&vs), *scale = views_add(&vs), *bias = views_add(&vs);
  /* The weight dtype picks the format: int8 (with per-row scales) or float32. */
  const ef_sparse_dtype dtype = is_int8_buffer(w_obj) ? EF_SPARSE_QS8 : EF_SPARSE_F32;
  if (get_array(w_obj, w, "w", dtype == EF_SPARSE_QS8 ? 'b' : 'f', 2, 0)) goto fail;
  const Py_ssize_t n = dim(w, 0), k = dim(w, 1);
  if (n == 0 || k == 0 || k > 65535) { PyErr_Format(PyExc_ValueError, "w: need 0 < N and 0 < K <= 65535, got [%zd, %zd]", n, k); goto fail; }
  if (dtype == EF_SPARSE_QS8) {
    if (get_array(scale_obj, scale, "w_scale", 'f', 1, 0) || expect_dim(scale, 0, n, "w_scale", "N")) goto fail;
  } else if (scale_obj != Py_None) {
    PyErr_SetString(PyExc_ValueError, "w_scale: only int8 sparse weights take scales");
    goto fail;
  }
  if (bias_obj != Py_None && (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, n, "bias", "N"))) goto fail;
  PackedObject* p = PyObject_New(PackedObject, &PackedType);
  if (p == NULL) goto fail;
  p->kind = PACKED_SPARSE;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_sparse_pack(dtype, w->buf, (size_t)n, (size_t)k, scale->buf, bias->buf, &p->u.sp);
  Py_END_ALLOW_THREADS if (rc != 0) {
    Py_DECREF(p);
    PyErr_NoMemory();
    goto fail;
  }
  views_release(&vs);
  return (PyObject*)p;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_sparse_gemm(PyObject* self, PyObject* args) {
  PyObject *x_obj, *scale_obj, *zp_obj, *packed_obj, *out_obj;
  float out_min, out_max;
  if (!PyArg_ParseTuple(args, "OOOOOff", &x_obj, &scale_obj, &zp_obj, &packed_obj, &out_obj, &out_min, &out_max)) return NULL;
  PackedObject* pk = packed_arg(packed_obj, PACKED_SPARSE, "packed");
  if (pk == NULL) return NULL;
  const ef_sparse_packed* w = &pk->u.sp;
  const int is_q8 = w->dtype == EF_SPARSE_QS8;
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *scale = views_add(&vs), *zp = views_add(&vs), *out = views_add(&vs);
  if (get_array(x_obj, x, "x", is_q8 ? 'b' : 'f', 2, 0) || expect_dim(x, 1, (Py_ssize_t)w->k, "x", "K of the packed weights")) goto fail;
  const Py_ssize_t m = dim(x, 0);
  if (is_q8) {
    if (get_array(scale_obj, scale, "x_scale", 'f', 1, 0) || expect_dim(scale, 0, m, "x_scale", "M")) goto fail;
    if (get_array(zp_obj, zp, "x_zero_point", 'i', 1, 0) || expect_dim(zp, 0, m, "x_zero_point", "M")) goto fail;
    const int32_t* z = zp->buf;
    for (Py_ssize_t i = 0; i < m; i++)
      if (z[i] < -128 || z[i] > 127) {
        PyErr_Format(PyExc_ValueError, "x_zero_point[%zd] = %d is outside the int8 range [-128, 127]", i, z[i]);
        goto fail;
      }
  }
  if (get_array(out_obj, out, "out", 'f', 2, 1) || expect_dim(out, 0, m, "out", "M") || expect_dim(out, 1, (Py_ssize_t)w->n, "out", "N")) goto fail;
  ef_sparse_params params = {.out_min = out_min, .out_max = out_max, .x_scale = scale->buf, .x_zp = zp->buf};
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_sparse_gemm(NULL, (size_t)m, x->buf, w, out->buf, &params);
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* The int8 sparse GEMV layouts' packers, one entry per layout:
 * <layout>_pack(w int8 [N,K], w_scale [N], bias|None) -> Packed
 * The same argument checks for all three; `max_k` is the layout's column limit. */
static PyObject* sparse_q8_pack(PyObject* args, packed_kind kind, const char* layout, size_t max_k) {
  PyObject *w_obj, *scale_obj, *bias_obj;
  if (!PyArg_ParseTuple(args, "OOO", &w_obj, &scale_obj, &bias_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *w = views_add(&vs), *scale = views_add(&vs), *bias = views_add(&vs);
  if (get_array(w_obj, w, "w", 'b', 2, 0)) goto fail;
  const Py_ssize_t n = dim(w, 0), k = dim(w, 1);
  if (n == 0 || k == 0 || (size_t)k > max_k) {
    PyErr_Format(PyExc_ValueError, "w: need 0 < N and 0 < K <= %zu, got [%zd, %zd]", max_k, n, k);
    goto fail;
  }
  if (get_array(scale_obj, scale, "w_scale", 'f', 1, 0) || expect_dim(scale, 0, n, "w_scale", "N")) goto fail;
  if (bias_obj != Py_None && (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, n, "bias", "N"))) goto fail;
  PackedObject* p = PyObject_New(PackedObject, &PackedType);
  if (p == NULL) goto fail;
  p->kind = kind;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  switch (kind) {
    case PACKED_SPW: rc = ef_spw_pack(w->buf, (size_t)n, (size_t)k, scale->buf, bias->buf, &p->u.spw); break;
    case PACKED_SPB: rc = ef_spb_pack(w->buf, (size_t)n, (size_t)k, scale->buf, bias->buf, &p->u.spb); break;
    default: rc = ef_spp_pack(w->buf, (size_t)n, (size_t)k, scale->buf, bias->buf, &p->u.spp); break;
  }
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    memset(&p->u, 0, sizeof p->u); /* the packers free what they allocated: dealloc frees nothing */
    Py_DECREF(p);
    /* -1 past the size checks above: an index of the layout overflows (uint32 offsets) */
    if (rc == -1) PyErr_Format(PyExc_ValueError, "w: too many nonzeros for the %s layout", layout);
    else PyErr_NoMemory();
    goto fail;
  }
  views_release(&vs);
  return (PyObject*)p;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_spw_pack(PyObject* self, PyObject* args) {
  return sparse_q8_pack(args, PACKED_SPW, "windows", 16u * 65536u);
}
static PyObject* py_spb_pack(PyObject* self, PyObject* args) {
  return sparse_q8_pack(args, PACKED_SPB, "bitmask", EF_SPB_MAX_K);
}
static PyObject* py_spp_pack(PyObject* self, PyObject* args) {
  return sparse_q8_pack(args, PACKED_SPP, "permute", EF_SPP_MAX_K);
}

/* The int8 sparse layouts' GEMM, one fast-call entry per layout:
 * <layout>_gemm(x int8 [M,K] or [K], x_scale, x_zero_point, packed, out [M,N] or [N], out_min, out_max)
 * x_scale / x_zero_point: float32 / int32 arrays [M], or Python numbers for every row. */
static PyObject* sparse_q8_gemm(const char* fn, packed_kind kind, PyObject* const* args, Py_ssize_t nargs) {
  if (!nargs_ok(fn, nargs, 7)) return NULL;
  float out_min, out_max;
  if (float_arg(args[5], &out_min) || float_arg(args[6], &out_max)) return NULL;
  PackedObject* pk = packed_arg(args[3], kind, "packed");
  if (pk == NULL) return NULL;
  size_t n = 0, k = 0, nnz = 0;
  switch (kind) {
    case PACKED_SPW: n = pk->u.spw.n, k = pk->u.spw.k, nnz = pk->u.spw.nnz; break;
    case PACKED_SPB: n = pk->u.spb.n, k = pk->u.spb.k, nnz = pk->u.spb.nnz; break;
    default: n = pk->u.spp.n, k = pk->u.spp.k, nnz = pk->u.spp.nnz; break;
  }
  q8_args c;
  if (q8_args_get(&c, args[0], args[1], args[2], args[4], k, n, "x", "x_scale", "x_zero_point", "f")) {
    q8_args_release(&c);
    return NULL;
  }
  ef_sparse_params params = {.out_min = out_min, .out_max = out_max, .x_scale = c.scale, .x_zp = c.zp};
  const size_t m = (size_t)c.m;
  int rc;
  switch (kind) {
    case PACKED_SPW: RUN_RELEASING_GIL(m * (nnz + n), rc = ef_spw_gemm(NULL, m, c.x, &pk->u.spw, c.out, &params)); break;
    case PACKED_SPB: RUN_RELEASING_GIL(m * (nnz + n), rc = ef_spb_gemm(NULL, m, c.x, &pk->u.spb, c.out, &params)); break;
    default: RUN_RELEASING_GIL(m * (nnz + n), rc = ef_spp_gemm(NULL, m, c.x, &pk->u.spp, c.out, &params)); break;
  }
  if (rc != 0) {
    q8_args_release(&c);
    return PyErr_NoMemory();
  }
  return q8_args_finish(&c);
}

/* spp_isa() -> the permute layout's kernel under the current ISA setting ("avx512" or "scalar") */
static PyObject* py_spp_isa(PyObject* self, PyObject* unused) { return PyUnicode_FromString(ef_spp_select()->isa); }

static PyObject* py_spw_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return sparse_q8_gemm("spw_gemm", PACKED_SPW, args, nargs);
}
static PyObject* py_spb_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return sparse_q8_gemm("spb_gemm", PACKED_SPB, args, nargs);
}
static PyObject* py_spp_gemm(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  return sparse_q8_gemm("spp_gemm", PACKED_SPP, args, nargs);
}

/* ------------------------------------------------------------------ f32 gemm */

/* f32_pack(w float32 [N, K], bias|None) -> Packed "f32"; f32_bsr_pack: the same, 16 x 4
 * block-sparse ("sparse_f32_blocks"). One argument path, the format picks the packer. */
static PyObject* f32_pack_as(PyObject* args, packed_kind kind) {
  PyObject *w_obj, *bias_obj;
  if (!PyArg_ParseTuple(args, "OO", &w_obj, &bias_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *w = views_add(&vs), *bias = views_add(&vs);
  if (get_array(w_obj, w, "w", 'f', 2, 0)) goto fail;
  const Py_ssize_t n = dim(w, 0), k = dim(w, 1);
  if (n == 0 || k == 0) { PyErr_SetString(PyExc_ValueError, "w: shape must be non-empty"); goto fail; }
  if ((size_t)k > UINT32_MAX / 2) { PyErr_SetString(PyExc_ValueError, "w: K too large"); goto fail; }
  if (bias_obj != Py_None && (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, n, "bias", "N"))) goto fail;
  PackedObject* p = PyObject_New(PackedObject, &PackedType);
  if (p == NULL) goto fail;
  p->kind = kind;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = kind == PACKED_F32 ? ef_f32_pack(w->buf, (size_t)n, (size_t)k, bias->buf, &p->u.f32)
                                                 : ef_f32_bsr_pack(w->buf, (size_t)n, (size_t)k, bias->buf, &p->u.f32_bsr);
  Py_END_ALLOW_THREADS if (rc != 0) {
    Py_DECREF(p);
    PyErr_NoMemory();
    goto fail;
  }
  views_release(&vs);
  return (PyObject*)p;
fail:
  views_release(&vs);
  return NULL;
}
static PyObject* py_f32_pack(PyObject* self, PyObject* args) { return f32_pack_as(args, PACKED_F32); }
static PyObject* py_f32_bsr_pack(PyObject* self, PyObject* args) { return f32_pack_as(args, PACKED_F32_BSR); }

/* f32_gemm(x, packed, out, out_min, out_max) and f32_bsr_gemm: x float32 [M, K] or [K]. */
static PyObject* f32_gemm_as(PyObject* args, packed_kind kind) {
  PyObject *x_obj, *packed_obj, *out_obj;
  float lo, hi;
  if (!PyArg_ParseTuple(args, "OOOff", &x_obj, &packed_obj, &out_obj, &lo, &hi)) return NULL;
  PackedObject* pk = packed_arg(packed_obj, kind, "packed");
  if (pk == NULL) return NULL;
  const size_t k = kind == PACKED_F32 ? pk->u.f32.k : pk->u.f32_bsr.k;
  const size_t n = kind == PACKED_F32 ? pk->u.f32.n : pk->u.f32_bsr.n;
  views vs = {.n = 0};
  Py_buffer *x, *out;
  Py_ssize_t m;
  if (linear_x_out(&vs, x_obj, 'f', out_obj, k, n, &x, &out, &m)) goto fail;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = kind == PACKED_F32 ? ef_f32_gemm(NULL, (size_t)m, x->buf, &pk->u.f32, out->buf, lo, hi)
                                                 : ef_f32_bsr_gemm(NULL, (size_t)m, x->buf, &pk->u.f32_bsr, out->buf, lo, hi);
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}
static PyObject* py_f32_gemm(PyObject* self, PyObject* args) { return f32_gemm_as(args, PACKED_F32); }
static PyObject* py_f32_bsr_gemm(PyObject* self, PyObject* args) { return f32_gemm_as(args, PACKED_F32_BSR); }

/* ------------------------------------------------------------------ convolution */

/* dwconv3x3(x [N,H,W,C], w [3,3,C], bias [C], out [N,OH,OW,C], stride, lo, hi,
 *           x_scale, x_zp, w_scale [C] | None, out_scale, out_zp)
 * The dtype of x (float32 or int8) selects the kernel; int8 needs w_scale and out params. */
static PyObject* py_dwconv3x3(PyObject* self, PyObject* args) {
  PyObject *x_obj, *w_obj, *bias_obj, *out_obj, *ws_obj;
  int stride, x_zp, out_zp;
  float lo, hi, x_scale, out_scale;
  if (!PyArg_ParseTuple(args, "OOOOifffiOfi", &x_obj, &w_obj, &bias_obj, &out_obj, &stride, &lo, &hi, &x_scale, &x_zp,
                        &ws_obj, &out_scale, &out_zp))
    return NULL;
  if (stride != 1 && stride != 2) return PyErr_Format(PyExc_ValueError, "stride must be 1 or 2, got %d", stride);
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *w = views_add(&vs), *bias = views_add(&vs), *out = views_add(&vs), *ws = views_add(&vs);
  const int q8 = is_int8_buffer(x_obj);
  const char t = q8 ? 'b' : 'f';
  if (get_array(x_obj, x, "x", t, 4, 0)) goto fail;
  const Py_ssize_t nb = dim(x, 0), h = dim(x, 1), wd = dim(x, 2), c = dim(x, 3);
  if (h == 0 || wd == 0 || c == 0) { PyErr_SetString(PyExc_ValueError, "x: H, W and C must be non-zero"); goto fail; }
  if (get_array(w_obj, w, "w", t, 3, 0) || expect_dim(w, 0, 3, "w", "3") || expect_dim(w, 1, 3, "w", "3") || expect_dim(w, 2, c, "w", "C")) goto fail;
  if (get_array(bias_obj, bias, "bias", 'f', 1, 0) || expect_dim(bias, 0, c, "bias", "C")) goto fail;
  const Py_ssize_t oh = (Py_ssize_t)ef_dwconv_out_size((size_t)h, (size_t)stride), ow = (Py_ssize_t)ef_dwconv_out_size((size_t)wd, (size_t)stride);
  if (get_array(out_obj, out, "out", t, 4, 1) || expect_dim(out, 0, nb, "out", "N") || expect_dim(out, 1, oh, "out", "output height") ||
      expect_dim(out, 2, ow, "out", "output width") || expect_dim(out, 3, c, "out", "C"))
    goto fail;
  if (q8) {
    if (get_array(ws_obj, ws, "w_scale", 'f', 1, 0) || expect_dim(ws, 0, c, "w_scale", "C")) goto fail;
    if (x_zp < -128 || x_zp > 127 || out_zp < -128 || out_zp > 127 || !(out_scale > 0.0f) || !isfinite(out_scale)) {
      PyErr_SetString(PyExc_ValueError, "int8 depthwise needs zero points in [-128, 127] and out_scale > 0");
      goto fail;
    }
  }
  ef_dwconv_params p = {.h = (size_t)h, .w = (size_t)wd, .c = (size_t)c, .stride = (size_t)stride, .out_min = lo, .out_max = hi,
                        .x_scale = x_scale, .x_zp = x_zp, .w_scale = ws->buf, .out_inv_scale = q8 ? 1.0f / out_scale : 1.0f, .out_zp = out_zp};
  int rc = 0;
  Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < nb && rc == 0; i++) {
    if (q8)
      rc = ef_dwconv3x3_qs8(NULL, (const int8_t*)x->buf + i * h * wd * c, w->buf, bias->buf, (int8_t*)out->buf + i * oh * ow * c, &p);
    else
      rc = ef_dwconv3x3_f32(NULL, (const float*)x->buf + i * h * wd * c, w->buf, bias->buf, (float*)out->buf + i * oh * ow * c, &p);
  }
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* im2col(x [N,H,W,C] int8|float32, kh, kw, sh, sw, pad_top, pad_left, oh, ow, pad_value, out [N, oh*ow, kh*kw*C]) */
static PyObject* py_im2col(PyObject* self, PyObject* args) {
  PyObject *x_obj, *out_obj;
  Py_ssize_t kh, kw, sh, sw, pt, pl, oh, ow;
  double pad_value;
  int channel_major = 0; /* 1: patches in ONNX (c, kh, kw) order (ef_im2col_chw) */
  if (!PyArg_ParseTuple(args, "OnnnnnnnndO|p", &x_obj, &kh, &kw, &sh, &sw, &pt, &pl, &oh, &ow, &pad_value, &out_obj,
                        &channel_major))
    return NULL;
  if (kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || pt < 0 || pl < 0 || oh <= 0 || ow <= 0)
    return PyErr_Format(PyExc_ValueError, "im2col: kernel, strides and output size must be positive, padding >= 0");
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *out = views_add(&vs);
  const int q8 = is_int8_buffer(x_obj);
  const char t = q8 ? 'b' : 'f';
  if (get_array(x_obj, x, "x", t, 4, 0)) goto fail;
  const Py_ssize_t nb = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
  /* Taps outside the image read pad_value, so any output size stays in bounds. */
  if (get_array(out_obj, out, "out", t, 3, 1) || expect_dim(out, 0, nb, "out", "N") || expect_dim(out, 1, oh * ow, "out", "OH*OW") ||
      expect_dim(out, 2, kh * kw * c, "out", "KH*KW*C"))
    goto fail;
  const size_t elem = q8 ? 1 : 4;
  int8_t pad8 = (int8_t)pad_value;
  float padf = (float)pad_value;
  const void* pad = q8 ? (const void*)&pad8 : (const void*)&padf;
  Py_BEGIN_ALLOW_THREADS for (Py_ssize_t i = 0; i < nb; i++)
    (channel_major ? ef_im2col_chw : ef_im2col)(elem, (const uint8_t*)x->buf + i * h * w * c * elem, (size_t)h, (size_t)w,
                                                (size_t)c, (size_t)kh, (size_t)kw, (size_t)sh, (size_t)sw, (size_t)pt,
                                                (size_t)pl, (size_t)oh, (size_t)ow, pad,
                                                (uint8_t*)out->buf + i * oh * ow * kh * kw * c * elem);
  Py_END_ALLOW_THREADS views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* qd8_gemm(x float32 [M,K], packed, out float32 [M,N], out_min, out_max) */
static PyObject* py_qd8_gemm(PyObject* self, PyObject* args) {
  PyObject *x_obj, *packed_obj, *out_obj;
  float lo, hi;
  if (!PyArg_ParseTuple(args, "OOOff", &x_obj, &packed_obj, &out_obj, &lo, &hi)) return NULL;
  PackedObject* pk = packed_arg(packed_obj, PACKED_QS8, "packed");
  if (pk == NULL) return NULL;
  const ef_qs8_packed* w = &pk->u.qs8;
  views vs = {.n = 0};
  Py_buffer *x, *out;
  Py_ssize_t m;
  if (linear_x_out(&vs, x_obj, 'f', out_obj, w->k, w->n, &x, &out, &m)) goto fail;
  ef_qs8_gemm_params params = {.k = w->k, .out_min = lo, .out_max = hi, .out_int8 = 0, .out_inv_scale = 1.0f, .out_zp = 0};
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_qd8_gemm(NULL, (size_t)m, x->buf, w, out->buf, &params);
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* ------------------------------------------------------------------ nn (transformer float ops) */

/* layernorm(x [R,N], res [R,N] | None, gamma [N], beta [N] | None, eps, out [R,N]); out may be x */
static PyObject* py_layernorm(PyObject* self, PyObject* args) {
  PyObject *x_obj, *res_obj, *g_obj, *b_obj, *out_obj;
  float eps;
  if (!PyArg_ParseTuple(args, "OOOOfO", &x_obj, &res_obj, &g_obj, &b_obj, &eps, &out_obj)) return NULL;
  if (!(eps >= 0.0f)) return PyErr_Format(PyExc_ValueError, "layernorm: eps must be >= 0");
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *res = views_add(&vs), *g = views_add(&vs), *b = views_add(&vs), *out = views_add(&vs);
  if (get_array(x_obj, x, "x", 'f', 2, 0)) goto fail;
  const Py_ssize_t rows = dim(x, 0), n = dim(x, 1);
  if (n == 0) { PyErr_SetString(PyExc_ValueError, "x: the normalized axis is empty"); goto fail; }
  if (res_obj != Py_None && (get_array(res_obj, res, "res", 'f', 2, 0) || expect_dim(res, 0, rows, "res", "rows of x") ||
                             expect_dim(res, 1, n, "res", "columns of x")))
    goto fail;
  if (get_array(g_obj, g, "gamma", 'f', 1, 0) || expect_dim(g, 0, n, "gamma", "columns of x")) goto fail;
  if (b_obj != Py_None && (get_array(b_obj, b, "beta", 'f', 1, 0) || expect_dim(b, 0, n, "beta", "columns of x"))) goto fail;
  if (get_array(out_obj, out, "out", 'f', 2, 1) || expect_dim(out, 0, rows, "out", "rows of x") || expect_dim(out, 1, n, "out", "columns of x")) goto fail;
  Py_BEGIN_ALLOW_THREADS ef_nn_layernorm(NULL, (size_t)rows, (size_t)n, x->buf, res->buf, g->buf, b->buf, eps, out->buf);
  Py_END_ALLOW_THREADS views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* softmax(x [R,N], out [R,N]) over the last axis; out may be x */
static PyObject* py_softmax(PyObject* self, PyObject* args) {
  PyObject *x_obj, *out_obj;
  if (!PyArg_ParseTuple(args, "OO", &x_obj, &out_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *out = views_add(&vs);
  if (get_array(x_obj, x, "x", 'f', 2, 0)) goto fail;
  const Py_ssize_t rows = dim(x, 0), n = dim(x, 1);
  if (get_array(out_obj, out, "out", 'f', 2, 1) || expect_dim(out, 0, rows, "out", "rows of x") || expect_dim(out, 1, n, "out", "columns of x")) goto fail;
  Py_BEGIN_ALLOW_THREADS ef_nn_softmax(NULL, (size_t)rows, (size_t)n, x->buf, out->buf);
  Py_END_ALLOW_THREADS views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* gelu(x [N], out [N]) and erf(x [N], out [N]); out may be x */
static PyObject* elementwise(PyObject* args, void (*fn)(const ef_nn_config*, size_t, const float*, float*)) {
  PyObject *x_obj, *out_obj;
  if (!PyArg_ParseTuple(args, "OO", &x_obj, &out_obj)) return NULL;
  views vs = {.n = 0};
  Py_buffer *x = views_add(&vs), *out = views_add(&vs);
  if (get_array(x_obj, x, "x", 'f', 1, 0)) goto fail;
  const Py_ssize_t n = dim(x, 0);
  if (get_array(out_obj, out, "out", 'f', 1, 1) || expect_dim(out, 0, n, "out", "length of x")) goto fail;
  Py_BEGIN_ALLOW_THREADS fn(NULL, (size_t)n, x->buf, out->buf);
  Py_END_ALLOW_THREADS views_release(&vs);
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

static PyObject* py_gelu(PyObject* self, PyObject* args) { return elementwise(args, ef_nn_gelu); }
static PyObject* py_erf(PyObject* self, PyObject* args) { return elementwise(args, ef_nn_erf); }

/* attention(q [B,Sq,Wq], k [B,Skv,Wk], v [B,Skv,Wv], mask [B|1,Skv] | None, out [B,Sq,H*D], heads, head_dim,
 *           scale, q_off, k_off, v_off): head h reads columns off + h*D .. off + (h+1)*D of q, k, v
 * (so q, k and v may be one merged [B, S, 3*H*D] buffer) and writes columns h*D.. of out. */
static PyObject* py_attention(PyObject* self, PyObject* args) {
  PyObject *q_obj, *k_obj, *v_obj, *m_obj, *out_obj;
  Py_ssize_t heads, d, qo, ko, vo;
  float scale;
  if (!PyArg_ParseTuple(args, "OOOOOnnfnnn", &q_obj, &k_obj, &v_obj, &m_obj, &out_obj, &heads, &d, &scale, &qo, &ko, &vo))
    return NULL;
  if (heads <= 0 || d <= 0 || qo < 0 || ko < 0 || vo < 0)
    return PyErr_Format(PyExc_ValueError, "attention: heads and head_dim must be positive, offsets >= 0");
  views vs = {.n = 0};
  Py_buffer *q = views_add(&vs), *k = views_add(&vs), *v = views_add(&vs), *m = views_add(&vs), *out = views_add(&vs);
  if (get_array(q_obj, q, "q", 'f', 3, 0) || get_array(k_obj, k, "k", 'f', 3, 0) || get_array(v_obj, v, "v", 'f', 3, 0)) goto fail;
  const Py_ssize_t b = dim(q, 0), sq = dim(q, 1), skv = dim(k, 1), e = heads * d;
  if (expect_dim(k, 0, b, "k", "batch of q") || expect_dim(v, 0, b, "v", "batch of q") || expect_dim(v, 1, skv, "v", "length of k")) goto fail;
  if (qo + e > dim(q, 2) || ko + e > dim(k, 2) || vo + e > dim(v, 2)) {
    PyErr_SetString(PyExc_ValueError, "attention: offset + heads * head_dim exceeds the width of q, k or v");
    goto fail;
  }
  Py_ssize_t mb = 0;
  if (m_obj != Py_None) {
    if (get_array(m_obj, m, "mask", 'f', 2, 0) || expect_dim(m, 1, skv, "mask", "length of k")) goto fail;
    if (dim(m, 0) != b && dim(m, 0) != 1) {
      PyErr_Format(PyExc_ValueError, "mask: dimension 0 must be 1 or the batch %zd, got %zd", b, dim(m, 0));
      goto fail;
    }
    mb = dim(m, 0) == 1 ? 0 : skv;
  }
  if (get_array(out_obj, out, "out", 'f', 3, 1) || expect_dim(out, 0, b, "out", "batch") || expect_dim(out, 1, sq, "out", "length of q") ||
      expect_dim(out, 2, e, "out", "heads * head_dim"))
    goto fail;
  const ef_nn_attention_params p = {
      .batch = (size_t)b, .heads = (size_t)heads, .sq = (size_t)sq, .skv = (size_t)skv, .d = (size_t)d,
      .q = (const float*)q->buf + qo, .q_bstride = (size_t)(sq * dim(q, 2)), .q_rstride = (size_t)dim(q, 2),
      .k = (const float*)k->buf + ko, .k_bstride = (size_t)(skv * dim(k, 2)), .k_rstride = (size_t)dim(k, 2),
      .v = (const float*)v->buf + vo, .v_bstride = (size_t)(skv * dim(v, 2)), .v_rstride = (size_t)dim(v, 2),
      .mask = m->buf, .mask_bstride = (size_t)mb, .scale = scale,
      .out = out->buf, .out_bstride = (size_t)(sq * e), .out_rstride = (size_t)e};
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ef_nn_attention(NULL, &p);
  Py_END_ALLOW_THREADS views_release(&vs);
  if (rc != 0) return PyErr_NoMemory();
  Py_RETURN_NONE;
fail:
  views_release(&vs);
  return NULL;
}

/* ------------------------------------------------------------------ dispatch control */

static PyObject* py_cpu_features(PyObject* self, PyObject* unused) {
  const uint32_t det = ef_arch_flags_detected();
  return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:s,s:s,s:i}", "avx2", PyBool_FromLong(det & EF_ARCH_X86_AVX2), "avxvnni",
                       PyBool_FromLong(det & EF_ARCH_X86_AVXVNNI), "avx512", PyBool_FromLong(det & EF_ARCH_X86_AVX512),
                       "amx", PyBool_FromLong(det & EF_ARCH_X86_AMX), "neon",
                       PyBool_FromLong(det & EF_ARCH_ARM_NEON), "machine",
#if EF_ARCH_X86
                       "x86_64",
#elif EF_ARCH_ARM64
                       "aarch64",
#else
                       "other",
#endif
                       "isa", ef_isa_name(), "threads", ef_get_num_threads());
}

/* core_ghz() -> this core's running clock in GHz, measured over ~20 ms (0.0 where not
 * implemented: non-x86). For the benchmarks' peak fractions. */
static PyObject* py_core_ghz(PyObject* self, PyObject* unused) {
  double ghz;
  Py_BEGIN_ALLOW_THREADS
  ghz = ef_core_ghz();
  Py_END_ALLOW_THREADS
  return PyFloat_FromDouble(ghz);
}

static PyObject* py_set_isa(PyObject* self, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
  const int rc = ef_set_isa(name);
  if (rc == -1) return PyErr_Format(PyExc_ValueError, "unknown ISA %R (use 'auto', 'scalar', 'avx2', 'avxvnni', 'avx512', 'amx' or 'neon')", PyTuple_GET_ITEM(args, 0));
  if (rc == -2) return PyErr_Format(PyExc_ValueError, "ISA %R is not available on this CPU/build", PyTuple_GET_ITEM(args, 0));
  Py_RETURN_NONE;
}

static PyObject* py_get_isa(PyObject* self, PyObject* unused) { return PyUnicode_FromString(ef_isa_name()); }

static PyObject* py_set_num_threads(PyObject* self, PyObject* args) {
  int n;
  if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
  ef_set_num_threads(n);
  Py_RETURN_NONE;
}

static PyObject* py_get_num_threads(PyObject* self, PyObject* unused) { return PyLong_FromLong(ef_get_num_threads()); }

static PyMethodDef methods[] = {
    {"cpu_features", py_cpu_features, METH_NOARGS, "Detected CPU features and the active ISA."},
    {"set_isa", py_set_isa, METH_VARARGS, "set_isa(name): 'auto', 'scalar', 'avx2' or 'neon'."},
    {"get_isa", py_get_isa, METH_NOARGS, "Name of the ISA the dispatcher uses now."},
    {"core_ghz", py_core_ghz, METH_NOARGS, "core_ghz() -> the running core clock in GHz, measured (0.0: unknown)."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "Threads per kernel call (<= 0: one per CPU)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads per kernel call."},
    {"qs8_pack", py_qs8_pack, METH_VARARGS, "qs8_pack(w, w_scale, w_zero_point|None, bias|None) -> Packed"},
    {"qs8_gemm", (PyCFunction)(void (*)(void))py_qs8_gemm, METH_FASTCALL,
     "qs8_gemm(a, a_scale, a_zero_point, packed, out|None, out_min, out_max, out_scale, out_zero_point) -> out"},
    {"maxpool_qs8", (PyCFunction)(void (*)(void))py_maxpool_qs8, METH_FASTCALL,
     "maxpool_qs8(x int8 [N,H,W,C], out int8 [N,OH,OW,C], kh, kw, stride_h, stride_w, dil_h, dil_w): no padding"},
    {"maxpool_f32", (PyCFunction)(void (*)(void))py_maxpool_f32, METH_FASTCALL,
     "maxpool_f32(x float32 [N,H,W,C], out float32 [N,OH,OW,C], kh, kw, stride_h, stride_w, dil_h, dil_w): no padding"},
    {"quantize", (PyCFunction)(void (*)(void))py_quantize, METH_FASTCALL,
     "quantize(x float32 [n], out int8 [n], scale, zero_point): clamp(round_half_even(x * (1/scale)) + zp)"},
    {"dequantize", (PyCFunction)(void (*)(void))py_dequantize, METH_FASTCALL,
     "dequantize(q int8 [n], out float32 [n], scale, zero_point): (q - zp) * scale"},
    {"qadd", py_qadd, METH_VARARGS,
     "qadd(a, b, out, a_scale, a_zp, b_scale, b_zp, out_scale, out_zp): int8 out = Q(DQ(a) + DQ(b)), 1-D int8"},
    {"bsr_pack", py_bsr_pack, METH_VARARGS, "bsr_pack(w int8, w_scale, w_zero_point|None, bias|None) -> Packed (16x4 blocks)"},
    {"bsr_gemm", (PyCFunction)(void (*)(void))py_bsr_gemm, METH_FASTCALL,
     "bsr_gemm(a, a_scale, a_zero_point, packed, out|None, out_min, out_max, out_scale, out_zero_point) -> out"},
    {"qb_pack", py_qb_pack, METH_VARARGS, "qb_pack(q, bits, group_size, scales, offsets, bias|None) -> Packed"},
    {"qb_gemm", py_qb_gemm, METH_VARARGS, "qb_gemm(x, packed, out, out_min=-inf, out_max=inf)"},
    {"sparse_pack", py_sparse_pack, METH_VARARGS, "sparse_pack(w int8|float32, w_scale|None, bias|None) -> Packed"},
    {"sparse_gemm", py_sparse_gemm, METH_VARARGS, "sparse_gemm(x, x_scale|None, x_zero_point|None, packed, out, out_min, out_max)"},
    {"qd8_gemm", py_qd8_gemm, METH_VARARGS, "qd8_gemm(x, packed, out, out_min, out_max)"},
    {"spw_pack", py_spw_pack, METH_VARARGS, "spw_pack(w int8, w_scale, bias|None) -> Packed (windows layout)"},
    {"spw_gemm", (PyCFunction)(void (*)(void))py_spw_gemm, METH_FASTCALL,
     "spw_gemm(x, x_scale, x_zero_point, packed, out|None, out_min, out_max) -> out"},
    {"spb_pack", py_spb_pack, METH_VARARGS, "spb_pack(w int8, w_scale, bias|None) -> Packed (bitmask layout)"},
    {"spb_gemm", (PyCFunction)(void (*)(void))py_spb_gemm, METH_FASTCALL,
     "spb_gemm(x, x_scale, x_zero_point, packed, out|None, out_min, out_max) -> out"},
    {"spp_isa", py_spp_isa, METH_NOARGS, "spp_isa() -> kernel of the permute layout now: 'avx512' (VBMI) or 'scalar'"},
    {"spp_pack", py_spp_pack, METH_VARARGS, "spp_pack(w int8, w_scale, bias|None) -> Packed (permute layout)"},
    {"spp_gemm", (PyCFunction)(void (*)(void))py_spp_gemm, METH_FASTCALL,
     "spp_gemm(x, x_scale, x_zero_point, packed, out|None, out_min, out_max) -> out"},
    {"f32_pack", py_f32_pack, METH_VARARGS, "f32_pack(w, bias|None) -> Packed"},
    {"f32_gemm", py_f32_gemm, METH_VARARGS, "f32_gemm(x, packed, out, out_min, out_max)"},
    {"f32_bsr_pack", py_f32_bsr_pack, METH_VARARGS, "f32_bsr_pack(w float32, bias|None) -> Packed (16x4 blocks)"},
    {"f32_bsr_gemm", py_f32_bsr_gemm, METH_VARARGS, "f32_bsr_gemm(x, packed, out, out_min, out_max)"},
    {"dwconv3x3", py_dwconv3x3, METH_VARARGS, "dwconv3x3(x, w, bias, out, stride, lo, hi, x_scale, x_zp, w_scale, out_scale, out_zp)"},
    {"im2col", py_im2col, METH_VARARGS,
     "im2col(x, kh, kw, sh, sw, pad_top, pad_left, oh, ow, pad_value, out, channel_major=False): NHWC patches, "
     "(kh, kw, c) order, or ONNX (c, kh, kw) order with channel_major"},
    {"layernorm", py_layernorm, METH_VARARGS, "layernorm(x, res|None, gamma, beta|None, eps, out)"},
    {"softmax", py_softmax, METH_VARARGS, "softmax(x, out): rows of x"},
    {"gelu", py_gelu, METH_VARARGS, "gelu(x, out): exact (erf) GELU, 1-D"},
    {"erf", py_erf, METH_VARARGS, "erf(x, out): 1-D"},
    {"attention", py_attention, METH_VARARGS,
     "attention(q, k, v, mask|None, out, heads, head_dim, scale, q_off, k_off, v_off)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_kernels", .m_doc = "edgefleet native kernels", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__kernels(void) {
  import_array(); /* the NumPy C API (get_array_ex's fast path); returns NULL if numpy is missing */
  if (PyType_Ready(&PackedType) < 0) return NULL;
  PyObject* m = PyModule_Create(&module);
  if (m == NULL) return NULL;
  Py_INCREF(&PackedType);
  if (PyModule_AddObject(m, "Packed", (PyObject*)&PackedType) < 0) {
    Py_DECREF(&PackedType);
    Py_DECREF(m);
    return NULL;
  }
  PyModule_AddIntConstant(m, "QS8_MAX_K", EF_QS8_MAX_K);
  return m;
}
