// W4A16 on Hopper for M > 16: CUTLASS 3.x mixed-input GEMM (TMA + wgmma; the int4 weight tiles
// go through registers, are converted to the activation type and scaled per group there), so no
// dequantized copy of the weight is ever written. The problem is computed transposed —
// Yᵀ[N, M] = W[N, K] · Xᵀ — so the int4 weight is CUTLASS's K-major A operand and the output,
// column-major N×M, is Y row-major; the bias is then a per-row broadcast of that problem.
//
// Numerics: the mainloop converts q = code − 8 to T exactly and multiplies by the group's scale
// in T arithmetic (the f32 product of two short mantissas is exact, then one rounding to T), i.e.
// the reference's round_T(q · s) — when s itself is a T value (PrepareInt4 checks that) and there
// is no zero point (asymmetric weights take the dequantize + cuBLAS path). Accumulation is f32 on
// the tensor cores; the bias is added in f32 and the sum rounded once to T.
//
// Two tile shapes, by M (CUTLASS's N here): 128 weight rows × kTileM tokens, kTileM = 64 up to
// kW4A16MidMaxM (at M = 256 and N = 4096, 128 CTAs instead of 64 on 132 SMs), 128 above. Each in
// its own translation unit (gemm_w4a16_sm90.cu, gemm_w4a16_sm90_mid.cu), so they compile in
// parallel.
#ifndef LOWBIT_KERNELS_CUDA_GEMM_W4A16_SM90_CUH_
#define LOWBIT_KERNELS_CUDA_GEMM_W4A16_SM90_CUH_

#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>

#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>
#include <string>

#include "kernels/cuda/cutlass_launch.cuh"
#include "kernels/cuda/gemm_sm90.h"

namespace lowbit::kernels::cuda::sm90 {

template <class T, int kTileM>
struct W4A16Gemm {
  // 128 weight rows × kTileM tokens; K tile: 128 bytes of T.
  using TileShape = cute::Shape<cute::_128, cute::Int<kTileM>, cute::_64>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using LayoutW = cutlass::layout::RowMajor;     // A: W [N, K], K-major
  using LayoutX = cutlass::layout::ColumnMajor;  // B: Xᵀ (K × M), K-major
  using LayoutY = cutlass::layout::ColumnMajor;  // D: Yᵀ (N × M) column-major = Y [M, N] row-major
  static constexpr int kAlignW = 32;             // 16 bytes of int4
  static constexpr int kAlignT = 8;              // 16 bytes of T

  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  using Bias = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float>;
  using Add =
      cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, T, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Add, Acc, Bias>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutY, kAlignT, T, LayoutY, kAlignT,
      cutlass::epilogue::TmaWarpSpecializedCooperative, Tree>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<cutlass::int4b_t, T>, LayoutW, kAlignW, T,
      LayoutX, kAlignT, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static Status Run(const W4A16Sm90Args& a, cudaStream_t stream) {
    using StrideW = typename Kernel::StrideA;
    using StrideX = typename Kernel::StrideB;
    using StrideY = typename Kernel::StrideD;
    using StrideS = typename Mainloop::StrideScale;
    const int m = static_cast<int>(a.m), n = static_cast<int>(a.n), k = static_cast<int>(a.k);
    const int groups = static_cast<int>((a.k + a.group_size - 1) / a.group_size);
    StrideW sw = cutlass::make_cute_packed_stride(StrideW{}, cute::make_shape(n, k, 1));
    StrideX sx = cutlass::make_cute_packed_stride(StrideX{}, cute::make_shape(m, k, 1));
    StrideY sy = cutlass::make_cute_packed_stride(StrideY{}, cute::make_shape(n, m, 1));
    StrideS ss = cutlass::make_cute_packed_stride(StrideS{}, cute::make_shape(n, groups, 1));

    typename Bias::Arguments bias{a.bias, -0.0f, {}};  // -0.0f: x + -0 = x exactly
    typename Tree::Arguments tree{{}, bias, {}};
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {n, m, k, 1},
                                  {static_cast<const cutlass::int4b_t*>(a.w), sw, static_cast<const T*>(a.x), sx,
                                   static_cast<const T*>(a.scale), ss, static_cast<int>(a.group_size)},
                                  {tree, nullptr, sy, static_cast<T*>(a.y), sy}};
    const auto problem = [&] {
      return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k) + " group " +
             std::to_string(a.group_size);
    };
    return LaunchCutlassGemm<Gemm>("W4A16 sm90", problem, args, a.workspace, a.workspace_bytes, stream);
  }
};

// M up to which the 64-token tile runs.
constexpr int64_t kW4A16MidMaxM = 256;

}  // namespace lowbit::kernels::cuda::sm90

#endif  // LOWBIT_KERNELS_CUDA_GEMM_W4A16_SM90_CUH_
