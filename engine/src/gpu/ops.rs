//! The block kernels as operations on Burn's dispatch tensors: a backend extension implemented
//! for CubeCL's backend (burn-wgpu), called through [`Tensor::into_dispatch`].

use super::kernels::{dequantize_rows_kernel, matvec_kernel};
use super::layout::{BlockFormat, GROUP};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, Cube, Dispatch};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::cubecl::calculate_cube_count_elemwise;
use burn_cubecl::cubecl::ir::FloatKind;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

/// Units per cube of the matrix-vector kernel: a power of two (the shared-memory reduction
/// halves it), 64 = two warps / one wavefront, enough to keep a row's loads in flight.
const UNITS: usize = 64;

/// Products and lookups on weights kept in GGML blocks (u32 words, [`super::layout`]).
#[backend_extension(Cube: cfg(feature = "wgpu"))]
pub trait BlockOps: Backend {
    /// x·Wᵀ for x: [rows, inp] and W [out, inp] in `format` blocks.
    fn block_matvec(x: FloatTensor<Self>, w: IntTensor<Self>, format: BlockFormat, out: usize, inp: usize) -> FloatTensor<Self>;
    /// Rows `ids` of W as `dtype` (f32 or f16): [ids.len(), inp].
    fn block_rows(w: IntTensor<Self>, ids: IntTensor<Self>, format: BlockFormat, inp: usize, dtype: DType) -> FloatTensor<Self>;
}

impl BlockOps for Cube {
    fn block_matvec(x: FloatTensor<Self>, w: IntTensor<Self>, format: BlockFormat, out: usize, inp: usize) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let rows = x.meta.shape()[0];
        let dtype = x.dtype;
        let y = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, out]), dtype);
        // Output rows spread over x and y: a dispatch dimension holds at most 65535 cubes.
        let across = out.min(32768) as u32;
        let down = out.div_ceil(across as usize) as u32;
        // One row (decode) gets its own kernel: a 4-row tile would do 4× its multiply-adds.
        let tile = if rows == 1 { 1 } else { 4 };
        let tiles = rows.div_ceil(tile) as u32;
        let client = y.client.clone();
        matvec_kernel::launch(
            &client,
            CubeCount::Static(across, down, tiles),
            CubeDim::new_1d(UNITS as u32),
            w.into_buffer_arg(),
            x.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            rows,
            out,
            inp,
            format,
            UNITS,
            tile,
            float_type(dtype),
        );
        y
    }

    fn block_rows(w: IntTensor<Self>, ids: IntTensor<Self>, format: BlockFormat, inp: usize, dtype: DType) -> FloatTensor<Self> {
        let ids = into_contiguous(ids);
        let n = ids.meta.shape()[0];
        let y = empty_device_contiguous_dtype(w.client.clone(), w.device.clone(), Shape::new([n, inp]), dtype);
        let units = n * inp / GROUP;
        let client = y.client.clone();
        let dim = CubeDim::new(&client, units);
        let count = calculate_cube_count_elemwise(&client, units, dim);
        dequantize_rows_kernel::launch(&client, count, dim, w.into_buffer_arg(), ids.into_buffer_arg(), y.clone().into_buffer_arg(), units, inp, format, float_type(dtype));
        y
    }
}

/// The kernels' element type for activations of `dtype`: f16 or f32 (the model layer never asks
/// for another).
fn float_type(dtype: DType) -> ElemType {
    match dtype {
        DType::F16 => ElemType::Float(FloatKind::F16),
        DType::F32 => ElemType::Float(FloatKind::F32),
        other => panic!("block kernels compute f16 or f32 activations, not {other:?}"),
    }
}

/// x·Wᵀ through the matrix-vector kernel.
pub fn matvec(x: Tensor<2>, w: &Tensor<2, Int>, format: BlockFormat, out: usize, inp: usize) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as BlockOps>::block_matvec(x.into_dispatch(), w.clone().into_dispatch(), format, out, inp))
}

/// Rows `ids` (a u32 tensor) of W as `dtype`.
pub fn rows(w: &Tensor<2, Int>, ids: Tensor<1, Int>, format: BlockFormat, inp: usize, dtype: DType) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as BlockOps>::block_rows(w.clone().into_dispatch(), ids.into_dispatch(), format, inp, dtype))
}
