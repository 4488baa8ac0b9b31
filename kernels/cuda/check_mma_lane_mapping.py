# Emulates the GEMV kernels' lane/register mapping against the mma fragment layouts taken from
# CUTLASS's MMA_Traits (SM80_16x8x32_S32S8S8S32_TN, SM80_16x8x16_F32BF16BF16F32_TN).
import numpy as np
rng = np.random.default_rng(1)

def a_pos_8(g, t, i):   # int8/e4m3 m16n8k32: value i (0..15) of lane -> (m, k); reg = i // 4
    return g + 8 * ((i // 4) % 2), 4 * t + (i % 4) + 16 * (i // 8)
def b_pos_8(g, t, i):   # value i (0..7) -> (k, n); reg = i // 4
    return 4 * t + (i % 4) + 16 * (i // 4), g
def a_pos_16(g, t, i):  # f16/bf16 m16n8k16: value i (0..7) -> (m, k); reg = i // 2
    return g + 8 * ((i // 2) % 2), 2 * t + (i % 2) + 8 * (i // 4)
def b_pos_16(g, t, i):  # value i (0..3) -> (k, n); reg = i // 2
    return 2 * t + (i % 2) + 8 * (i // 2), g
def c_pos(g, t, i):
    return g + 8 * (i // 2), 2 * t + (i % 2)

def mma(a_vals, b_vals, kdim, apos, bpos):
    """a_vals[lane] = list of element values in fragment order; returns C contribution 16x8."""
    A = np.full((16, kdim), np.nan); B = np.full((kdim, 8), np.nan)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i, v in enumerate(a_vals[lane]):
            m, k = apos(g, t, i); assert np.isnan(A[m, k]); A[m, k] = v
        for i, v in enumerate(b_vals[lane]):
            k, n = bpos(g, t, i); assert np.isnan(B[k, n]); B[k, n] = v
    assert not np.isnan(A).any() and not np.isnan(B).any()
    return A @ B

def split_plan(N, K, rows, step, per_sm, sms, max_slices=16):  # PlanGemvSplit (common.cuh)
    tiles, steps, slots = -(-N // rows), -(-K // step), per_sm * sms
    if tiles <= slots:
        slices = slots // tiles  # one wave
    else:  # the fewest slices whose waves are >= 90% full
        slices = next((s for s in range(1, 17) if tiles * s * 10 >= -(-tiles * s // slots) * slots * 9), 16)
    slices = min(slices, max_slices, steps)
    slice_steps = -(-steps // slices)
    slices = -(-steps // slice_steps)
    assert tiles > slots or tiles * slices <= slots, "one wave when the tiles fit one"
    return tiles, slices, slice_steps

def split_grid(M, N, K, rows, step, per_sm, sms, warps, warp_rows, warp_tile):
    """The split-K kernels' grid: warp_tile(n0, begin, end) -> {(m, col): value} for one warp's
    outputs (m < M, any col of the padded tile); partial slots written once, then each tile's
    slices added in order. Returns Y and the number of slices."""
    tiles, slices, slice_steps = split_plan(N, K, rows, step, per_sm, sms)
    steps = -(-K // step)
    ld = tiles * rows
    part = np.full((slices, M, ld), np.nan); written = np.zeros(part.shape, int)
    Y = np.full((M, N), np.nan)
    for tile in range(tiles):
        for sl in range(slices):
            begin = sl * slice_steps
            for w in range(warps):
                for (m, col), v in warp_tile(tile * rows + warp_rows * w, begin, min(steps, begin + slice_steps)).items():
                    part[sl, m, col] = v; written[sl, m, col] += 1
        for m in range(M):  # the tile's last block: slices in order, columns in range
            for col in range(tile * rows, min(N, (tile + 1) * rows)):
                Y[m, col] = sum(part[s, m, col] for s in range(slices))
    assert (written == 1).all(), "a partial slot written twice or never"
    return Y, slices

def loop_steps(begin, end, stride, unroll):  # Mma8Rows' / W4MmaRows' loop: (step, step < end)
    s0 = begin
    while s0 < end:
        for u in range(unroll):
            yield s0 + u * stride, s0 + u * stride < end
        s0 += stride * unroll

def w8_steps(begin, end, stride):
    return loop_steps(begin, end, stride, 4)

def w8_warp(Xp, W, n0, steps):  # one warp's 16x8 accumulator tile for weight rows n0..n0+7
    K = Xp.shape[1]
    Wp = np.zeros((8, K)); rows = W[n0:n0 + 8]; Wp[:rows.shape[0]] = rows
    C = np.zeros((16, 8))
    for s, in_range in steps:
        def piece(row_vals, off):  # 16 bytes -> 4 dwords of 4 values
            v = row_vals[off:off + 16] if in_range and off < K else np.zeros(16)
            return [v[4 * d:4 * d + 4] for d in range(4)]
        for half in range(2):  # dwords 0-1, then 2-3
            av, bv = [], []
            for lane in range(32):
                g, t = lane // 4, lane % 4
                off = s * 64 + 16 * t
                lo, hi, w = piece(Xp[g], off), piece(Xp[g + 8], off), piece(Wp[g], off)
                d0, d1 = 2 * half, 2 * half + 1
                regs_a = [lo[d0], hi[d0], lo[d1], hi[d1]]
                regs_b = [w[d0], w[d1]]
                av.append([x for r in regs_a for x in r]); bv.append([x for r in regs_b for x in r])
            C += mma(av, bv, 32, a_pos_8, b_pos_8)
    return C

def w8_out(C, n0, M):  # Gemv8Pos: the lane's accumulators -> {(m, col)} for tokens m < M
    out = {}
    for lane in range(32):
        for i in range(4):
            m, n = c_pos(lane // 4, lane % 4, i)
            if m < M: out[(m, n0 + n)] = C[m, n]
    return out

def gemv8(X, W, warps=4):  # Gemv8BitKernel: 8 rows per block, the warps splitting K (w, w + 4, ...)
    M, K = X.shape; N = W.shape[0]; steps = (K + 63) // 64
    Y = np.zeros((M, N)); Xp = np.zeros((16, K)); Xp[:M] = X
    for n0 in range(0, N, 8):
        C = sum(w8_warp(Xp, W, n0, w8_steps(w, steps, warps)) for w in range(warps))
        for (m, col), v in w8_out(C, n0, M).items():
            if col < N: Y[m, col] = v
    return Y

def gemv8_split(X, W, sms):  # Gemv8BitSplitKernel: 64 rows (8 warps x 8) per block, 3 blocks per SM
    M, K = X.shape; N = W.shape[0]
    Xp = np.zeros((16, K)); Xp[:M] = X
    return split_grid(M, N, K, 64, 64, 3, sms, 8, 8,
                      lambda n0, b, e: w8_out(w8_warp(Xp, W, n0, w8_steps(b, e, 1)), n0, M))

def w4_steps(begin, end, stride):
    return loop_steps(begin, end, stride, 2)

def w4_warp(Xp, Wd, n0, r, steps):  # one warp's 16x8 accumulator tile for n-tile r over `steps`
    K = Xp.shape[1]
    rows = Wd[n0 + 8 * r:n0 + 8 * r + 8]
    Wp = np.zeros((8, K)); Wp[:rows.shape[0]] = rows
    C = np.zeros((16, 8))
    for s, in_range in steps:
        for j in range(4):        # word j of the lane's 4 words
            for half in range(2):  # codes 0-3, then 4-7
                av, bv = [], []
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    kb = s * 128 + 32 * t
                    kk = kb + 8 * j
                    ok = in_range and kb < K
                    get = lambda row: row[kk:kk + 8] if ok else np.zeros(8)
                    lo, hi, w = get(Xp[g]), get(Xp[g + 8]), get(Wp[g])
                    # int4: lo.x = elements 0,1; lo.y = 2,3; lo.z = 4,5; lo.w = 6,7
                    e = 4 * half
                    regs_a = [lo[e:e + 2], hi[e:e + 2], lo[e + 2:e + 4], hi[e + 2:e + 4]]
                    regs_b = [w[e:e + 2], w[e + 2:e + 4]]  # DequantPair(word, e), (word, e + 2)
                    av.append([x for q in regs_a for x in q]); bv.append([x for q in regs_b for x in q])
                C += mma(av, bv, 16, a_pos_16, b_pos_16)
    return C

def w4_out(n0, r, lane, i):  # W4OutPos: (token, weight row) of accumulator i of n-tile r
    m, n = c_pos(lane // 4, lane % 4, i)
    return m, n0 + 8 * r + n

def gemv4(X, Wd, warps=8):  # GemvW4MmaKernel: 16 rows per block, the warps splitting K (w, w + 8, ...)
    M, K = X.shape; N = Wd.shape[0]; steps = (K + 127) // 128
    Y = np.zeros((M, N)); Xp = np.zeros((16, K)); Xp[:M] = X
    for n0 in range(0, N, 16):
        for r in range(2):
            C = sum(w4_warp(Xp, Wd, n0, r, w4_steps(w, steps, warps)) for w in range(warps))
            for lane in range(32):
                for i in range(4):
                    m, col = w4_out(n0, r, lane, i)
                    if m < M and col < N: Y[m, col] = C[lane // 4 + 8 * (i // 2), 2 * (lane % 4) + i % 2]
    return Y

def gemv4_split(X, Wd, sms):  # GemvW4SplitKernel: 128 rows (8 warps x 16) per block, 2 blocks per SM
    M, K = X.shape; N = Wd.shape[0]
    Xp = np.zeros((16, K)); Xp[:M] = X
    def warp_tile(n0, begin, end):
        out = {}
        for r in range(2):
            C = w4_warp(Xp, Wd, n0, r, w4_steps(begin, end, 1))
            for lane in range(32):
                for i in range(4):
                    m, col = w4_out(n0, r, lane, i)
                    if m < M: out[(m, col)] = C[lane // 4 + 8 * (i // 2), 2 * (lane % 4) + i % 2]
        return out
    return split_grid(M, N, K, 128, 128, 2, sms, 8, 16, warp_tile)

def dequant4(codes, scale, gs):
    return (codes - 8) * np.repeat(scale, gs, axis=1)[:, :codes.shape[1]]

for (M, N, K) in [(1, 8, 64), (3, 13, 96), (16, 24, 192), (9, 8, 48), (16, 5, 16)]:
    X = rng.integers(-128, 128, (M, K)).astype(float); W = rng.integers(-128, 128, (N, K)).astype(float)
    assert np.array_equal(gemv8(X, W), X @ W.T), (M, N, K)
print("8-bit gemv mapping ok")
# The split-K kernel: ragged N, K tails inside a step, several slices, an uneven last slice, one
# slice, M across the upper-rows boundary.
# (16, 448, 1024, 2): 7 tiles on 6 slots, more than a wave: the fewest slices whose waves are >= 90%
# full (4: 28 blocks in 5 waves of 6). (5, 1, 4112, 132): one row, K % 64 == 16.
for (M, N, K, sms) in [(16, 56, 320, 132), (6, 130, 1040, 4), (9, 64, 4096, 132), (16, 200, 192, 1),
                       (16, 448, 1024, 2), (5, 1, 4112, 132)]:
    X = rng.integers(-128, 128, (M, K)).astype(float); W = rng.integers(-128, 128, (N, K)).astype(float)
    Y, slices = gemv8_split(X, W, sms)
    assert np.array_equal(Y, X @ W.T), (M, N, K, slices)
print("8-bit split-K gemv mapping ok")
for (M, N, K, gs) in [(1, 16, 128, 128), (5, 20, 96, 32), (16, 33, 256, 128), (12, 16, 160, 32)]:
    X = rng.integers(-8, 8, (M, K)).astype(float)
    codes = rng.integers(0, 16, (N, K)).astype(float); scale = rng.integers(1, 4, (N, (K + gs - 1) // gs)).astype(float)
    Wd = dequant4(codes, scale, gs)
    assert np.array_equal(gemv4(X, Wd), X @ Wd.T), (M, N, K)
print("w4 gemv mapping ok")
# The split-K kernel: ragged N (a tile's upper warps past N), K tails inside a step, one slice per
# step, uneven slices (the last one shorter), one slice, M across the upper-rows boundary.
for (M, N, K, gs, sms) in [(16, 56, 320, 128, 132), (5, 200, 832, 32, 4), (9, 128, 4096, 128, 132),
                           (16, 300, 640, 128, 1), (1, 130, 96, 32, 132)]:
    X = rng.integers(-8, 8, (M, K)).astype(float)
    codes = rng.integers(0, 16, (N, K)).astype(float); scale = rng.integers(1, 4, (N, (K + gs - 1) // gs)).astype(float)
    Wd = dequant4(codes, scale, gs)
    Y, slices = gemv4_split(X, Wd, sms)
    assert np.array_equal(Y, X @ Wd.T), (M, N, K, slices)
print("w4 split-K gemv mapping ok")
