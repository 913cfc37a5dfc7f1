#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* imgnorm._kernels: exact per-channel sum, sum of squares, min and max of
 * interleaved uint8 pixels in one pass.
 *
 * Optional accelerator: imgnorm.stats has a numpy fallback giving identical
 * results (tests compare the two).  Accumulators are per byte position over a
 * period of 16 * channels bytes, so the inner loop has a fixed stride the
 * compiler vectorizes; 32-bit lanes are flushed to 64 bits before they can
 * overflow, so the sums are exact for any buffer size.
 */
#define LANES 16
#define MAXC 4
#define FLUSH 65536  /* groups per flush: 65536 * 255^2 < 2^32 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* One binary, the best vector unit at run time (dispatch through an ifunc). */
__attribute__((target_clones("avx2", "default")))
#endif
static void u8_stats(const uint8_t *p, Py_ssize_t n, int C,
                     uint64_t *S, uint64_t *Q, uint8_t *MN, uint8_t *MX) {
    const Py_ssize_t P = (Py_ssize_t)C * LANES;
    uint32_t s[MAXC * LANES], q[MAXC * LANES];
    uint8_t mn[MAXC * LANES], mx[MAXC * LANES];
    uint64_t s64[MAXC * LANES], q64[MAXC * LANES];
    memset(s64, 0, sizeof s64); memset(q64, 0, sizeof q64);
    memset(mn, 255, sizeof mn); memset(mx, 0, sizeof mx);
    Py_ssize_t groups = n / P, g = 0;
    while (g < groups) {
        Py_ssize_t end = g + FLUSH < groups ? g + FLUSH : groups;
        memset(s, 0, sizeof s); memset(q, 0, sizeof q);
        for (; g < end; g++) {
            const uint8_t *b = p + g * P;
            for (Py_ssize_t j = 0; j < P; j++) {
                uint16_t v = b[j];
                s[j] += v;
                q[j] += (uint16_t)(v * v);
                mn[j] = b[j] < mn[j] ? b[j] : mn[j];
                mx[j] = b[j] > mx[j] ? b[j] : mx[j];
            }
        }
        for (Py_ssize_t j = 0; j < P; j++) { s64[j] += s[j]; q64[j] += q[j]; }
    }
    for (int c = 0; c < C; c++) { S[c] = 0; Q[c] = 0; MN[c] = 255; MX[c] = 0; }
    for (Py_ssize_t j = 0; j < P; j++) {
        int c = (int)(j % C);
        S[c] += s64[j]; Q[c] += q64[j];
        if (mn[j] < MN[c]) MN[c] = mn[j];
        if (mx[j] > MX[c]) MX[c] = mx[j];
    }
    for (Py_ssize_t i = groups * P; i < n; i++) {
        int c = (int)((i - groups * P) % C);
        uint32_t v = p[i];
        S[c] += v; Q[c] += v * v;
        if (p[i] < MN[c]) MN[c] = p[i];
        if (p[i] > MX[c]) MX[c] = p[i];
    }
}

static PyObject *py_u8_stats(PyObject *self, PyObject *args) {
    Py_buffer buf; int C;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &C)) return NULL;
    if (C < 1 || C > MAXC || buf.len % C) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "channels must be 1..4 and divide the buffer length");
        return NULL;
    }
    uint64_t S[MAXC], Q[MAXC]; uint8_t MN[MAXC], MX[MAXC];
    Py_BEGIN_ALLOW_THREADS
    u8_stats((const uint8_t *)buf.buf, buf.len, C, S, Q, MN, MX);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyObject *out = PyTuple_New(4);
    PyObject *ls = PyList_New(C), *lq = PyList_New(C), *lmn = PyList_New(C), *lmx = PyList_New(C);
    for (int c = 0; c < C; c++) {
        PyList_SET_ITEM(ls, c, PyLong_FromUnsignedLongLong(S[c]));
        PyList_SET_ITEM(lq, c, PyLong_FromUnsignedLongLong(Q[c]));
        PyList_SET_ITEM(lmn, c, PyLong_FromLong(MN[c]));
        PyList_SET_ITEM(lmx, c, PyLong_FromLong(MX[c]));
    }
    PyTuple_SET_ITEM(out, 0, ls); PyTuple_SET_ITEM(out, 1, lq);
    PyTuple_SET_ITEM(out, 2, lmn); PyTuple_SET_ITEM(out, 3, lmx);
    return out;
}

static PyMethodDef methods[] = {
    {"u8_stats", py_u8_stats, METH_VARARGS, "Exact per-channel (sum, sum_sq, min, max) of interleaved uint8 pixels."},
    {NULL, NULL, 0, NULL}
};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&mod); }
