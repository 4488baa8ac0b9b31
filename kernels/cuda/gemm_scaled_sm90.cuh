// Scaled 8-bit GEMMs on Hopper — W8A8-INT8 (int32 accumulators) and FP8-E4M3 (f32) — as CUTLASS
// 3.x TMA + wgmma warp-specialized kernels with the scales fused into the epilogue (an epilogue
// visitor tree), so the accumulators never leave the registers. The tree computes what the CPU
// reference (W8A8Value; the simple FP8 kernel) computes, in the same order and rounding (the files
// are built with --fmad=false, so no multiply-add is contracted; for W8A8 the result is the same
// bits, the int32 sum being exact):
//   y = (((float)acc · w_scale[n]) · x_scale[m]) + bias[n]      → rounded once to f16/bf16
// A missing bias adds -0.0f, the exact identity of IEEE addition (x + -0 = x, also for x = ±0).
// Per-tensor scales are the broadcasts' scalar case (a bool stride of false reads element 0 of the
// device pointer), so nothing is expanded on the host or in the workspace.
//
// FP8 uses the default (non-"fast accumulation") mainloop, which promotes the wgmma partial sums
// into f32 registers at an interval. Included by gemm_w8a8_sm90_*.cu and gemm_fp8_sm90.cu, each its
// own translation unit so the heavy CUTLASS instantiations compile in parallel.
#ifndef LOWBIT_KERNELS_CUDA_GEMM_SCALED_SM90_CUH_
#define LOWBIT_KERNELS_CUDA_GEMM_SCALED_SM90_CUH_

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

template <class ElementIn, class ElementD, class TileShape, class ClusterShape, class KernelSchedule,
          class EpilogueSchedule>
struct ScaledGemm {
  using ElementAcc = cute::conditional_t<cute::is_same_v<ElementIn, int8_t>, int32_t, float>;
  // X [M, K] row-major (K-major), W [N, K] row-major = K×N column-major (K-major), Y [M, N] row-major.
  using LayoutX = cutlass::layout::RowMajor;
  using LayoutW = cutlass::layout::ColumnMajor;
  using LayoutY = cutlass::layout::RowMajor;
  static constexpr int kAlignIn = 16;  // 16 bytes for TMA
  static constexpr int kAlignY = 16 / sizeof(ElementD);

  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  // Stride with a bool in the broadcast mode: true = one value per row/column, false = element 0.
  using WScale =
      cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, cute::Stride<cute::_0, bool, cute::_0>>;
  using XScale =
      cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, cute::Stride<bool, cute::_0, cute::_0>>;
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float>;
  template <class Out>
  using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, Out, float,
                                                     cutlass::FloatRoundStyle::round_to_nearest>;
  using Add = cutlass::epilogue::fusion::Sm90Compute<cutlass::plus, ElementD, float,
                                                     cutlass::FloatRoundStyle::round_to_nearest>;
  using AccTimesW = cutlass::epilogue::fusion::Sm90EVT<Mul<float>, Acc, WScale>;
  using TimesX = cutlass::epilogue::fusion::Sm90EVT<Mul<float>, AccTimesW, XScale>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Add, TimesX, Bias>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, void, LayoutY, kAlignY, ElementD, LayoutY,
      kAlignY, EpilogueSchedule, Tree>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementIn, LayoutX, kAlignIn, ElementIn, LayoutW, kAlignIn,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static Status Run(const char* what, const ScaledSm90Args& a, cudaStream_t stream) {
    using StrideX = typename Kernel::StrideA;
    using StrideW = typename Kernel::StrideB;
    using StrideY = typename Kernel::StrideD;
    const int m = static_cast<int>(a.m), n = static_cast<int>(a.n), k = static_cast<int>(a.k);
    StrideX sx = cutlass::make_cute_packed_stride(StrideX{}, cute::make_shape(m, k, 1));
    StrideW sw = cutlass::make_cute_packed_stride(StrideW{}, cute::make_shape(n, k, 1));
    StrideY sy = cutlass::make_cute_packed_stride(StrideY{}, cute::make_shape(m, n, 1));

    typename WScale::Arguments ws{a.w_scale, 0.0f, {cute::_0{}, a.w_scale_count != 1, cute::_0{}}};
    typename XScale::Arguments xs{a.x_scale, 0.0f, {a.x_scale_count != 1, cute::_0{}, cute::_0{}}};
    typename Bias::Arguments bias{a.bias, -0.0f, {}};
    typename Tree::Arguments tree{{{{}, ws, {}}, xs, {}}, bias, {}};

    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {m, n, k, 1},
                                  {static_cast<const ElementIn*>(a.x), sx, static_cast<const ElementIn*>(a.w), sw},
                                  {tree, nullptr, sy, static_cast<ElementD*>(a.y), sy}};
    const auto problem = [&] {
      return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
    };
    return LaunchCutlassGemm<Gemm>(what, problem, args, a.workspace, a.workspace_bytes, stream);
  }
};

// Tile configurations, chosen by M (the weight is N×K, the activations M×K). At small M the GEMM
// streams the weight, and what counts is how many SMs pull it: N / tile_n CTAs per 64 rows.
// Tiny M (≤ kScaledTinyMaxM): 64×64 tiles (N / 64 CTAs, twice the 64×128 tiles'), on a 1×8
// cluster whose 8 CTAs along N share each activation tile by TMA multicast (vLLM's choice for
// its smallest-M int8 / FP8 configurations). SmallM and LargeM use ping-pong consumer warp groups
// (one runs its epilogue while the other runs the next tile's wgmmas): small M 64×128 tiles, no
// cluster; large M 128×128 tiles on a 2×1 cluster, so each weight tile is loaded once by TMA
// multicast for two CTAs.
template <class ElementIn, class ElementD>
using TinyM = ScaledGemm<ElementIn, ElementD, cute::Shape<cute::_64, cute::_64, cute::_128>,
                         cute::Shape<cute::_1, cute::_8, cute::_1>, cutlass::gemm::KernelTmaWarpSpecialized,
                         cutlass::epilogue::TmaWarpSpecialized>;
template <class ElementIn, class ElementD>
using SmallM = ScaledGemm<ElementIn, ElementD, cute::Shape<cute::_64, cute::_128, cute::_128>,
                          cute::Shape<cute::_1, cute::_1, cute::_1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                          cutlass::epilogue::TmaWarpSpecialized>;
template <class ElementIn, class ElementD>
using LargeM = ScaledGemm<ElementIn, ElementD, cute::Shape<cute::_128, cute::_128, cute::_128>,
                          cute::Shape<cute::_2, cute::_1, cute::_1>, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                          cutlass::epilogue::TmaWarpSpecialized>;
// FP8 at large M: the same tile with cooperative consumers (each warp group owns 64 of the 128
// rows). The promoting FP8 mainloop keeps two accumulator sets; with one warp group owning the
// whole 128×128 tile (ping-pong) that is 256 f32 registers per thread and ptxas spills ≈ 900
// bytes per thread in the mainloop. Same per-output accumulation order, so the same numbers.
template <class ElementIn, class ElementD>
using LargeMCooperative =
    ScaledGemm<ElementIn, ElementD, cute::Shape<cute::_128, cute::_128, cute::_128>,
               cute::Shape<cute::_2, cute::_1, cute::_1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
               cutlass::epilogue::TmaWarpSpecializedCooperative>;

template <class ElementIn, template <class, class> class Config>
Status RunScaled(const char* what, const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  return y_is_bf16 ? Config<ElementIn, cutlass::bfloat16_t>::Run(what, a, stream)
                   : Config<ElementIn, cutlass::half_t>::Run(what, a, stream);
}

}  // namespace lowbit::kernels::cuda::sm90

#endif  // LOWBIT_KERNELS_CUDA_GEMM_SCALED_SM90_CUH_
