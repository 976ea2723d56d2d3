/*
 * The scoring kernel of sentinel_stream.detect.kernels, in C.
 *
 * Why C and not numba: numba brings LLVM into the main process (about 130 MiB of
 * resident memory before the first event, and a compile or a cache load at every
 * start) for about 200 lines of loops. This module is those loops, compiled when the
 * package is installed, called through the buffer protocol. The arithmetic is the
 * readable NumPy path's (forest.py, rules.py, kernels.onto_threshold), in the same
 * order, so the totals are bit for bit the NumPy walk's: tests/unit/test_kernels.py
 * proves it, and tests/unit/test_forest.py proves the walk equal to scikit-learn's.
 *
 * Built with -ffp-contract=off (no fused multiply-add: the NumPy path rounds every
 * product) and -fno-builtin-pow (pow(2, x) stays the C library's pow, which Python's
 * float ** calls too, rather than becoming exp2).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PATH_WIDTH 4097 /* forest.PATH_WIDTH: N_MAX + 1 */
#define PATH_ROWS 14     /* forest.PATH_TABLE's rows: _DEPTH_MAX + 2 */

typedef struct {
    const int16_t *nodes; /* (splits, 3): feature, left, right */
    const float *split;   /* (splits, 3): threshold, low, high */
    const int16_t *root;
    const int32_t *tree_start;
    const double *table;
    Py_ssize_t n_trees;
} Forest;

/* One split of a walk: the child x goes to, and the path and survival after the
 * chance of being cut off here (forest.py's module doc). */
static inline int split_step(float x, Py_ssize_t k, const Forest *f, int level, double *path,
                             double *alive) {
    const float *s = f->split + 3 * k;
    int right = x > s[0];
    int child = f->nodes[3 * k + 1 + right];
    float lo = s[1], hi = s[2];
    if (x > hi || x < lo) { /* beyond the split's range (never, inside it) */
        double x64 = (double)x, q;
        if (right)
            q = (x64 - (double)hi) / (x64 - (double)lo);
        else
            q = ((double)lo - x64) / ((double)hi - x64);
        *path += *alive * q * (double)(level + 1);
        *alive *= 1.0 - q;
    }
    return child;
}

static inline double leaf(double path, double alive, int level, int child, const double *table) {
    return path + alive * table[(Py_ssize_t)(level + 1) * PATH_WIDTH - child];
}

/* The expected path length in tree t of a row whose model features, raised to their
 * floors, are v. */
static double tree_path_length(const float *v, Py_ssize_t t, const Forest *f) {
    int r = f->root[t];
    if (r < 0) return f->table[PATH_WIDTH - r]; /* the root is a leaf: depth 1 */
    Py_ssize_t base = f->tree_start[t], k = base;
    int level = 0;
    double path = 0.0, alive = 1.0;
    for (;;) {
        int child = split_step(v[f->nodes[3 * k]], k, f, level, &path, &alive);
        level += 1;
        if (child < 0) return leaf(path, alive, level, child, f->table);
        k = base + child;
    }
}

/* Total path length over every tree of a row of two model features. Four trees are
 * walked in lockstep, a step each per round until all four reach a leaf: their steps do
 * not wait on each other, so the CPU overlaps four chains of dependent loads (a walk is
 * bound by each node's load, not by arithmetic). A group holding a tree whose root is a
 * leaf, and the last few trees, go one at a time. Summed in tree order: the totals are
 * bit for bit tree_path_length's. */
static double path_length_2(const float *v, const Forest *f) {
    const float v0 = v[0], v1 = v[1];
    const int16_t *nodes = f->nodes, *root = f->root;
    double total = 0.0;
    Py_ssize_t t = 0, n = f->n_trees;
    while (t < n) {
        if (t + 3 < n && root[t] >= 0 && root[t + 1] >= 0 && root[t + 2] >= 0 &&
            root[t + 3] >= 0) {
            Py_ssize_t b[4] = {f->tree_start[t], f->tree_start[t + 1], f->tree_start[t + 2],
                               f->tree_start[t + 3]};
            int c0 = 0, c1 = 0, c2 = 0, c3 = 0, l0 = 0, l1 = 0, l2 = 0, l3 = 0;
            double p0 = 0, p1 = 0, p2 = 0, p3 = 0, a0 = 1, a1 = 1, a2 = 1, a3 = 1;
            while (c0 >= 0 || c1 >= 0 || c2 >= 0 || c3 >= 0) {
                if (c0 >= 0) {
                    Py_ssize_t k = b[0] + c0;
                    c0 = split_step(nodes[3 * k] ? v1 : v0, k, f, l0, &p0, &a0);
                    l0 += 1;
                }
                if (c1 >= 0) {
                    Py_ssize_t k = b[1] + c1;
                    c1 = split_step(nodes[3 * k] ? v1 : v0, k, f, l1, &p1, &a1);
                    l1 += 1;
                }
                if (c2 >= 0) {
                    Py_ssize_t k = b[2] + c2;
                    c2 = split_step(nodes[3 * k] ? v1 : v0, k, f, l2, &p2, &a2);
                    l2 += 1;
                }
                if (c3 >= 0) {
                    Py_ssize_t k = b[3] + c3;
                    c3 = split_step(nodes[3 * k] ? v1 : v0, k, f, l3, &p3, &a3);
                    l3 += 1;
                }
            }
            total += leaf(p0, a0, l0, c0, f->table);
            total += leaf(p1, a1, l1, c1, f->table);
            total += leaf(p2, a2, l2, c2, f->table);
            total += leaf(p3, a3, l3, c3, f->table);
            t += 4;
            continue;
        }
        total += tree_path_length(v, t, f);
        t += 1;
    }
    return total;
}

/* ---- argument checking: every array's type and shape, before any walk -------------- */

typedef struct {
    Py_buffer b;
    int held;
} Arg;

static int take(PyObject *obj, Arg *a, const char *name, char kind, Py_ssize_t itemsize,
                int ndim, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &a->b, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: a C-contiguous%s array is needed", name,
                     writable ? ", writable" : "");
        return -1;
    }
    a->held = 1;
    const char *fmt = a->b.format ? a->b.format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    char k = fmt[0];
    int ok = a->b.itemsize == itemsize && a->b.ndim == ndim && fmt[1] == '\0';
    if (kind == 'i') /* a signed integer of itemsize bytes, whatever its letter */
        ok = ok && (k == 'b' || k == 'h' || k == 'i' || k == 'l' || k == 'q' || k == 'n');
    else
        ok = ok && k == kind;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected %d-d '%c' of %zd bytes, got %d-d '%s' of %zd",
                     name, ndim, kind, itemsize, a->b.ndim, fmt, a->b.itemsize);
        return -1;
    }
    return 0;
}

static void release(Arg *args, int n) {
    for (int i = 0; i < n; i++)
        if (args[i].held) PyBuffer_Release(&args[i].b);
}

static Py_ssize_t dim(const Arg *a, int i) { return a->b.shape[i]; }

static int shape_error(const char *what) {
    PyErr_Format(PyExc_ValueError, "shapes disagree: %s", what);
    return -1;
}

enum { X, REF, SCALE, COLS, FLOOR, NODES, SPLIT, ROOT, TSTART, TABLE, SCORES, DEVS, FLAGS,
       TEACH, N_ARRAYS };

static const char *const NAMES[N_ARRAYS] = {
    "x", "reference", "scale", "cols", "floor", "nodes", "split", "root", "tree_start",
    "table", "scores", "deviations", "flags", "teach"};

/* The forest's arrays agree with each other. Per call: a few comparisons per tree,
 * against a walk per row and tree. That every child and feature stays inside its arrays,
 * and every walk ends, is CompiledForest.check's, once per model (a restored one must
 * pass it): the walk itself does not check bounds. */
static int check_forest(Arg *a) {
    Py_ssize_t n_trees = dim(&a[ROOT], 0), n_splits = dim(&a[NODES], 0);
    if (dim(&a[NODES], 1) != 3 || dim(&a[SPLIT], 1) != 3 || dim(&a[SPLIT], 0) != n_splits)
        return shape_error("nodes and split must be (splits, 3)");
    if (dim(&a[TSTART], 0) != n_trees + 1) return shape_error("tree_start needs trees + 1");
    if (dim(&a[TABLE], 0) < PATH_ROWS * PATH_WIDTH) return shape_error("table is too short");
    const int32_t *start = a[TSTART].b.buf;
    if (n_trees > 0 && (start[0] < 0 || start[n_trees] > n_splits))
        return shape_error("tree_start beyond the split nodes");
    for (Py_ssize_t t = 0; t < n_trees; t++)
        if (start[t + 1] < start[t]) return shape_error("tree_start must not decrease");
    return 0;
}

/* score_route(x, reference, scale, cols, floor, nodes, split, root, tree_start, table,
 *             floor_path, denominator, model_threshold, rules_threshold, sum_excess,
 *             learn_margin, tail_score, scores, deviations, flags, teach)
 *   -> (n_flagged, n_teach, n_tail)
 * See kernels.judge_route. The walk itself runs without the GIL. */
static PyObject *score_route(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 21) {
        PyErr_Format(PyExc_TypeError, "score_route takes 21 arguments, got %zd", nargs);
        return NULL;
    }
    Arg a[N_ARRAYS];
    memset(a, 0, sizeof a);
    PyObject *result = NULL;
    static const struct {
        int arg, slot;
        char kind;
        int size, ndim, writable;
    } spec[N_ARRAYS] = {
        {0, X, 'f', 4, 2, 0},      {1, REF, 'd', 8, 1, 0},     {2, SCALE, 'd', 8, 1, 0},
        {3, COLS, 'i', 8, 1, 0},   {4, FLOOR, 'f', 4, 1, 0},   {5, NODES, 'h', 2, 2, 0},
        {6, SPLIT, 'f', 4, 2, 0},  {7, ROOT, 'h', 2, 1, 0},    {8, TSTART, 'i', 4, 1, 0},
        {9, TABLE, 'd', 8, 1, 0},  {17, SCORES, 'd', 8, 1, 1}, {18, DEVS, 'd', 8, 2, 1},
        {19, FLAGS, '?', 1, 1, 1}, {20, TEACH, '?', 1, 1, 1},
    };
    for (int i = 0; i < N_ARRAYS; i++)
        if (take(args[spec[i].arg], &a[spec[i].slot], NAMES[spec[i].slot], spec[i].kind,
                 spec[i].size, spec[i].ndim, spec[i].writable) < 0)
            goto done;
    double floor_path = PyFloat_AsDouble(args[10]), denominator = PyFloat_AsDouble(args[11]),
           model_threshold = PyFloat_AsDouble(args[12]),
           rules_threshold = PyFloat_AsDouble(args[13]),
           learn_margin = PyFloat_AsDouble(args[15]), tail_score = PyFloat_AsDouble(args[16]);
    int sum_excess = PyObject_IsTrue(args[14]);
    if (PyErr_Occurred() || sum_excess < 0) goto done;

    Py_ssize_t n = dim(&a[X], 0), nf = dim(&a[X], 1), m = dim(&a[COLS], 0);
    if (dim(&a[REF], 0) != nf || dim(&a[SCALE], 0) != nf) {
        shape_error("reference and scale need one value per feature of x");
        goto done;
    }
    if (dim(&a[SCORES], 0) != n || dim(&a[FLAGS], 0) != n || dim(&a[TEACH], 0) != n ||
        dim(&a[DEVS], 0) != n || dim(&a[DEVS], 1) != nf) {
        shape_error("scores, flags, teach and deviations need one row per row of x");
        goto done;
    }
    if (check_forest(a) < 0) goto done;
    Forest f = {a[NODES].b.buf, a[SPLIT].b.buf, a[ROOT].b.buf, a[TSTART].b.buf,
                a[TABLE].b.buf, dim(&a[ROOT], 0)};
    if (f.n_trees > 0) {
        if (dim(&a[FLOOR], 0) != m) {
            shape_error("floor needs one value per model feature (cols)");
            goto done;
        }
        const int64_t *cols = a[COLS].b.buf;
        for (Py_ssize_t c = 0; c < m; c++)
            if (cols[c] < 0 || cols[c] >= nf) {
                shape_error("cols names a feature beyond x");
                goto done;
            }
    }
    float stack_v[64];
    float *v = m <= 64 ? stack_v : PyMem_RawMalloc(sizeof(float) * (size_t)m);
    if (v == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *x = a[X].b.buf, *floor_ = a[FLOOR].b.buf;
    const double *reference = a[REF].b.buf, *scale = a[SCALE].b.buf;
    const int64_t *cols = a[COLS].b.buf;
    double *scores = a[SCORES].b.buf, *deviations = a[DEVS].b.buf;
    char *flags = a[FLAGS].b.buf, *teach = a[TEACH].b.buf;
    long n_flagged = 0, n_teach = 0, n_tail = 0;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *row = x + i * nf;
        double worst = -INFINITY, excess = 0.0;
        for (Py_ssize_t j = 0; j < nf; j++) {
            double d = ((double)row[j] - reference[j]) / scale[j];
            deviations[i * nf + j] = d;
            worst = d > worst ? d : worst;
            excess += d > 0.0 ? d : 0.0;
        }
        double combined = sum_excess ? excess : worst;
        double rule = combined / 2.0;
        rule = rule > 0.0 ? rule : 0.0;
        rule = rule < 1.0 ? rule : 1.0;
        double score;
        if (f.n_trees == 0) {
            score = rule;
        } else {
            int at_floor = 1;
            for (Py_ssize_t c = 0; c < m; c++) {
                float xv = row[cols[c]];
                v[c] = xv > floor_[c] ? xv : floor_[c];
                at_floor = at_floor && v[c] == floor_[c];
            }
            double total;
            if (at_floor) { /* typical in every feature (one-sided): known without a walk */
                total = floor_path;
            } else if (m == 2) {
                total = path_length_2(v, &f);
            } else {
                total = 0.0;
                for (Py_ssize_t t = 0; t < f.n_trees; t++) total += tree_path_length(v, t, &f);
            }
            double forest = denominator == 0 ? 1.0 : pow(2.0, -(total / denominator));
            double mapped;
            if (rule < rules_threshold)
                mapped = rule * (model_threshold / rules_threshold);
            else
                mapped = model_threshold + (rule - rules_threshold) *
                                               ((1.0 - model_threshold) / (1.0 - rules_threshold));
            score = forest > mapped ? forest : mapped;
        }
        scores[i] = score;
        /* The verdict, and whether the row may teach: not when the rules alone flag it,
         * nor when it scores learn_margin or more above the threshold. */
        int flagged = score >= model_threshold;
        int teaches = score < model_threshold + learn_margin && !(combined >= 2.0 * rules_threshold);
        flags[i] = (char)flagged;
        teach[i] = (char)teaches;
        n_flagged += flagged;
        n_teach += teaches;
        n_tail += score >= tail_score;
    }
    Py_END_ALLOW_THREADS

    if (v != stack_v) PyMem_RawFree(v);
    result = Py_BuildValue("(lll)", n_flagged, n_teach, n_tail);
done:
    release(a, N_ARRAYS);
    return result;
}

/* path_lengths(v, nodes, split, root, tree_start, table, in_bag, out): each row's total
 * path length, tree by tree in order, one at a time; with in_bag (trees, rows), over
 * the trees that did not sample the row only (a fit's out-of-bag pass: see
 * CompiledForest.path_lengths), all of them when in_bag is (0, 0). The readable walk
 * it must equal is CompiledForest.tree_path_lengths (tests/unit/test_kernels.py). */
static PyObject *path_lengths(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "path_lengths(v, nodes, split, root, tree_start, table, in_bag, out)");
        return NULL;
    }
    Arg a[N_ARRAYS];
    memset(a, 0, sizeof a);
    PyObject *result = NULL;
    if (take(args[0], &a[X], "v", 'f', 4, 2, 0) < 0 ||
        take(args[1], &a[NODES], "nodes", 'h', 2, 2, 0) < 0 ||
        take(args[2], &a[SPLIT], "split", 'f', 4, 2, 0) < 0 ||
        take(args[3], &a[ROOT], "root", 'h', 2, 1, 0) < 0 ||
        take(args[4], &a[TSTART], "tree_start", 'i', 4, 1, 0) < 0 ||
        take(args[5], &a[TABLE], "table", 'd', 8, 1, 0) < 0 ||
        take(args[6], &a[FLAGS], "in_bag", '?', 1, 2, 0) < 0 ||
        take(args[7], &a[SCORES], "out", 'd', 8, 1, 1) < 0)
        goto done;
    if (check_forest(a) < 0) goto done;
    Py_ssize_t n = dim(&a[X], 0), nf = dim(&a[X], 1);
    if (dim(&a[SCORES], 0) != n) {
        shape_error("out needs one value per row of v");
        goto done;
    }
    Forest f = {a[NODES].b.buf, a[SPLIT].b.buf, a[ROOT].b.buf, a[TSTART].b.buf,
                a[TABLE].b.buf, dim(&a[ROOT], 0)};
    const char *in_bag = NULL;
    if (dim(&a[FLAGS], 1) != 0) {
        if (dim(&a[FLAGS], 0) != f.n_trees || dim(&a[FLAGS], 1) != n) {
            shape_error("in_bag must be (trees, rows), or (0, 0) for every tree");
            goto done;
        }
        in_bag = a[FLAGS].b.buf;
    }
    const float *v = a[X].b.buf;
    double *out = a[SCORES].b.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        double total = 0.0;
        for (Py_ssize_t t = 0; t < f.n_trees; t++)
            if (in_bag == NULL || !in_bag[t * n + i]) total += tree_path_length(v + i * nf, t, &f);
        out[i] = total;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(a, N_ARRAYS);
    return result;
}

static PyMethodDef methods[] = {
    {"score_route", (PyCFunction)(void (*)(void))score_route, METH_FASTCALL,
     "Score and judge a route's batch in one pass (see kernels.judge_route)."},
    {"path_lengths", (PyCFunction)(void (*)(void))path_lengths, METH_FASTCALL,
     "Each row's total path length over every tree, or its out-of-bag trees."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_kernel",
    .m_doc = "The scoring kernel (see _kernel.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
