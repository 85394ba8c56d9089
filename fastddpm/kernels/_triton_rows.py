"""The plan's coefficient rows (``update_rows.Row``) as Triton compile-time constants: a kernel reads
module globals only when they are constexprs. Imported by the fused kernels alone (it imports Triton)."""

import triton
import triton.language as tl

from .update_rows import Row

ROW_X = tl.constexpr(int(Row.X))
ROW_EPS = tl.constexpr(int(Row.EPS))
ROW_X0 = tl.constexpr(int(Row.X0))
ROW_NOISE = tl.constexpr(int(Row.NOISE))
ROW_X0_FROM_X = tl.constexpr(int(Row.X0_FROM_X))
ROW_X0_FROM_EPS = tl.constexpr(int(Row.X0_FROM_EPS))
ROW_HISTORY1 = tl.constexpr(int(Row.HISTORY1))
ROW_HISTORY2 = tl.constexpr(int(Row.HISTORY2))
ROW_HISTORY3 = tl.constexpr(int(Row.HISTORY3))


@triton.jit
def load_coef(coefs_ptr, row, num_steps, k):
    """Step k's coefficient of ``row`` from a (NUM_ROWS, num_steps) table."""
    return tl.load(coefs_ptr + row * num_steps + k)
